"""Attribution maps: pure, batched, jit/vmap-able and differentiable functions of a ``logits_fn``
(or ``features_fn`` / ``head_fn`` for CAM-type maps). Input-space maps are shaped like x; CAM-type
maps are (B, h, w). Methods never import ``jaxadv.models`` or ``jaxadv.attacks``.

    method(logits_fn, x, target, *, ...)            # saliency, integrated_gradients, occlusion, ...
    grad_cam(features_fn, head_fn, x, target)       # cam, grad_cam, grad_cam_plus_plus, cam_plus_plus
"""

from jaxadv.attributions._common import auto_chunk_size
from jaxadv.attributions.asm import adversarial_saliency_map, promotion_suppression_maps
from jaxadv.attributions.blur_ig import blur_integrated_gradients, gaussian_blur
from jaxadv.attributions.cam import cam, cam_plus_plus, grad_cam, grad_cam_plus_plus
from jaxadv.attributions.expected_gradients import expected_gradients, gradient_shap
from jaxadv.attributions.gradients import gradient_x_input, saliency
from jaxadv.attributions.guided_backprop import guided_backprop, guided_relu, with_guided_relus
from jaxadv.attributions.guided_ig import guided_integrated_gradients
from jaxadv.attributions.integrated_gradients import (
    QUADRATURE_RULES,
    integrated_gradients,
    make_baseline,
    path_ig,
    path_integrated_gradients,
    quadrature,
)
from jaxadv.attributions.noise import (
    noise_tunnel,
    smooth_grad,
    smooth_grad_squared,
    var_grad,
)
from jaxadv.attributions.occlusion import occlusion, occlusion_masks
from jaxadv.attributions.postprocess import (
    absolute,
    clip_percentile,
    normalize,
    reduce_channels,
    upsample,
)

__all__ = [
    "QUADRATURE_RULES", "absolute", "adversarial_saliency_map", "auto_chunk_size",
    "blur_integrated_gradients",
    "cam", "cam_plus_plus", "clip_percentile", "expected_gradients", "gaussian_blur",
    "grad_cam", "grad_cam_plus_plus", "gradient_shap", "gradient_x_input", "guided_backprop",
    "guided_integrated_gradients", "guided_relu", "integrated_gradients", "make_baseline",
    "noise_tunnel", "normalize", "occlusion", "occlusion_masks", "path_ig",
    "path_integrated_gradients", "promotion_suppression_maps", "quadrature", "reduce_channels",
    "saliency", "smooth_grad", "smooth_grad_squared", "upsample", "var_grad",
    "with_guided_relus",
]
