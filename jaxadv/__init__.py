"""jaxadv: adversarial robustness seen through interpretation, in JAX.

Sub-packages (imports run one way, from the top down):

* ``jaxadv.training``   explicit-state training steps, objectives, the loop, checkpoints.
* ``jaxadv.attacks``    pure attack functions ``attack(logits_fn, x, y, key, *, ...)``.
* ``jaxadv.attributions`` differentiable interpretation maps.
* ``jaxadv.data``       datasets by name -> numpy batches (images float32 in [0, 1], NHWC).
* ``jaxadv.models``     Flax modules exposing ``features`` and ``head`` for CAM.

Sub-packages are imported on demand. Importing ``jaxadv`` has one side effect, on CPU speed only:
where a host device has two or more cores it adds an XLA:CPU flag to ``XLA_FLAGS`` that runs
convolutions on every core (:func:`jaxadv.devices.set_cpu_convolution_flags`, which says when and
how to keep XLA's default), so import jaxadv before JAX's first computation.
"""

from jaxadv import devices as _devices

__version__ = "0.1.0"

_devices.set_cpu_convolution_flags()
