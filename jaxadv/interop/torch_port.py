"""PyTorch twins of jaxadv models with identical weights, for cross-checks against peer libraries
(Captum, torchattacks, Foolbox, ART, AutoAttack) and for speed comparisons.

The twins take NCHW float tensors in [0, 1] (the PyTorch convention) and reproduce jaxadv's
computation exactly, including TensorFlow/XLA 'SAME' padding (asymmetric for stride 2), the GAP
head, and input normalisation inside the model. Requires ``torch`` (``pip install -e .[bench]``).

    >>> tmodel = to_torch("smallgap", variables)          # variables from jaxadv
    >>> check_logits_agree(logits_fn, tmodel, x_nhwc)     # raises if they differ
"""

import math

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised where torch is absent
    raise ImportError("jaxadv.interop.torch_port needs PyTorch: pip install -e .[bench] "
                      "(torch==2.13.0, a CPU build).") from e


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _act(name: str):
    return {"relu": F.relu, "softplus": F.softplus, "swish": F.silu,
            "identity": lambda x: x}[name]


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with XLA/TensorFlow 'SAME' padding (possibly asymmetric)."""

    def forward(self, x):
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph, pw = _same_pads(x.shape[-2], kh, sh), _same_pads(x.shape[-1], kw, sw)
        if any(ph + pw):
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0)


def _conv(cin, cout, k, stride=1, bias=True):
    return SameConv2d(cin, cout, k, stride=stride, bias=bias)


class _Base(nn.Module):
    def __init__(self, mean=None, std=None):
        super().__init__()
        # Python floats, made a tensor of the input's dtype at each call (as jaxadv's Normalize
        # does): a float32 buffer would carry its rounding into a ``.double()`` twin.
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)

    def normalize(self, x):
        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x

    def cam(self, a):
        """(B, k, h, w) -> (B, K, h, w)."""
        out = torch.einsum("bkhw,kc->bchw", a, self.head_weight)
        if self.head_bias is not None:
            out = out + self.head_bias.view(1, -1, 1, 1)
        return out

    def head(self, a):
        out = a.mean(dim=(2, 3)) @ self.head_weight
        return out + self.head_bias if self.head_bias is not None else out

    def forward(self, x):
        return self.head(self.features(x))


class TorchSmallGAP(_Base):
    def __init__(self, num_classes=10, in_channels=1, widths=(16, 32, 100), activation="relu",
                 mean=None, std=None):
        super().__init__(mean, std)
        self.act = _act(activation)
        self.conv1 = _conv(in_channels, widths[0], 4, 2)
        self.conv2 = _conv(widths[0], widths[1], 4, 2)
        self.conv3 = _conv(widths[1], widths[2], 7, 1)
        self.head_weight = nn.Parameter(torch.zeros(widths[2], num_classes))
        self.head_bias = None

    def features(self, x):
        h = self.conv1(self.normalize(x))
        h = self.conv2(self.act(h))
        return self.conv3(self.act(h))


class TorchPoolGAP(_Base):
    def __init__(self, num_classes=10, in_channels=1, widths=(32, 64), activation="relu",
                 mean=None, std=None):
        super().__init__(mean, std)
        self.act = _act(activation)
        self.conv1 = _conv(in_channels, widths[0], 5)
        self.conv2 = _conv(widths[0], widths[1], 5)
        self.head_weight = nn.Parameter(torch.zeros(widths[1], num_classes))
        self.head_bias = None

    def features(self, x):
        h = F.max_pool2d(self.conv1(self.normalize(x)), 2)
        h = self.conv2(self.act(h))
        return F.max_pool2d(h, 2)


class _TorchPreActBlock(nn.Module):
    def __init__(self, cin, width, stride, use_bn, activation):
        super().__init__()
        self.act = _act(activation)
        self.norm0 = nn.BatchNorm2d(cin, eps=1e-5, momentum=0.1) if use_bn else nn.Identity()
        self.conv0 = _conv(cin, width, 3, stride, bias=False)
        self.norm1 = nn.BatchNorm2d(width, eps=1e-5, momentum=0.1) if use_bn else nn.Identity()
        self.conv1 = _conv(width, width, 3, 1, bias=False)
        self.shortcut = (_conv(cin, width, 1, stride, bias=False)
                         if stride != 1 or cin != width else None)

    def forward(self, x):
        out = self.act(self.norm0(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv0(out)
        out = self.conv1(self.act(self.norm1(out)))
        return out + sc


class TorchPreActResNet18(_Base):
    def __init__(self, num_classes=10, in_channels=3, activation="relu", use_batch_norm=True,
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
                 width_multiplier=1.0):
        super().__init__(mean, std)
        w = [int(round(c * width_multiplier)) for c in (64, 128, 256, 512)]
        self.act = _act(activation)
        self.stem = _conv(in_channels, w[0], 3, 1, bias=False)
        blocks, cin = [], w[0]
        for s, width in enumerate(w):
            for b in range(2):
                stride = (1 if s == 0 else 2) if b == 0 else 1
                blocks.append(_TorchPreActBlock(cin, width, stride, use_batch_norm, activation))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = (nn.BatchNorm2d(cin, eps=1e-5, momentum=0.1) if use_batch_norm
                           else nn.Identity())
        self.head_weight = nn.Parameter(torch.zeros(cin, num_classes))
        self.head_bias = nn.Parameter(torch.zeros(num_classes))

    def features(self, x):
        h = self.blocks(self.stem(self.normalize(x)))
        return self.act(self.final_norm(h))


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _load_conv(conv: nn.Conv2d, p: dict) -> None:
    conv.weight.data = _t(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)))
    if conv.bias is not None:
        conv.bias.data = _t(p["bias"])


def _load_bn(bn, p: dict, s: dict) -> None:
    if isinstance(bn, nn.Identity):
        return
    bn.weight.data, bn.bias.data = _t(p["scale"]), _t(p["bias"])
    bn.running_mean.data, bn.running_var.data = _t(s["mean"]), _t(s["var"])


def to_torch(name: str, variables, **model_kwargs) -> nn.Module:
    """A PyTorch twin of jaxadv model ``name`` ('smallgap', 'poolgap', 'preact_resnet18') holding
    ``variables`` (a Flax variables dict with 'params' and, for batch norm, 'batch_stats').

    ``model_kwargs`` are the kwargs the jaxadv model was built with (num_classes, activation,
    mean/std, ...), plus ``in_channels``. Returns the module in eval mode, float32, on CPU.
    """
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    head = params["head"]
    num_classes = np.asarray(head["kernel"]).shape[1]
    model_kwargs.setdefault("num_classes", num_classes)
    if name == "smallgap":
        model_kwargs.setdefault("in_channels", np.asarray(params["conv1"]["kernel"]).shape[2])
        m = TorchSmallGAP(**model_kwargs)
        for i in (1, 2, 3):
            _load_conv(getattr(m, f"conv{i}"), params[f"conv{i}"])
    elif name in ("poolgap", "pool"):
        model_kwargs.setdefault("in_channels", np.asarray(params["conv1"]["kernel"]).shape[2])
        m = TorchPoolGAP(**model_kwargs)
        for i in (1, 2):
            _load_conv(getattr(m, f"conv{i}"), params[f"conv{i}"])
    elif name == "preact_resnet18":
        body, bstats = params["body"], stats.get("body", {})
        model_kwargs.setdefault("in_channels", np.asarray(body["stem"]["kernel"]).shape[2])
        m = TorchPreActResNet18(**model_kwargs)
        _load_conv(m.stem, body["stem"])
        i = 0
        for s in range(4):
            for b in range(2):
                blk, pb, sb = m.blocks[i], body[f"stage{s}_block{b}"], bstats.get(
                    f"stage{s}_block{b}", {})
                _load_bn(blk.norm0, pb.get("norm0", {}), sb.get("norm0", {}))
                _load_bn(blk.norm1, pb.get("norm1", {}), sb.get("norm1", {}))
                _load_conv(blk.conv0, pb["conv0"])
                _load_conv(blk.conv1, pb["conv1"])
                if blk.shortcut is not None:
                    _load_conv(blk.shortcut, pb["shortcut"])
                i += 1
        _load_bn(m.final_norm, body.get("final_norm", {}), bstats.get("final_norm", {}))
    else:
        raise ValueError(f"No PyTorch twin for model {name!r}; available: smallgap, poolgap, "
                         "preact_resnet18.")
    m.head_weight.data = _t(head["kernel"])
    if m.head_bias is not None:
        m.head_bias.data = _t(head["bias"])
    return m.eval()


class _FeatureMap(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)


class WithFeatureLayer(nn.Module):
    """A twin of :func:`to_torch` as ``model.head(feat(x))``, with ``feat`` a module whose output
    is the last feature map (B, k, h, w): the layer that Captum's layer methods hook, e.g.
    ``m = WithFeatureLayer(twin); captum.attr.LayerGradCam(m, m.feat)`` for the twin of
    ``jaxadv.attributions.grad_cam(fns.features, fns.head, ...)``. Same logits as ``model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.feat = _FeatureMap(model)
        self.model = model

    def forward(self, x):
        return self.model.head(self.feat(x))


def nhwc_to_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(np.transpose(np.asarray(x, np.float32),
                                                              (0, 3, 1, 2))))


def nchw_to_nhwc(x) -> np.ndarray:
    """(B, C, H, W) torch tensor (any device, grad or not) or array -> (B, H, W, C) numpy array
    of the same dtype."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 4:
        raise ValueError(f"nchw_to_nhwc takes a (B, C, H, W) batch; got shape {a.shape}.")
    return np.transpose(a, (0, 2, 3, 1))


def check_logits_agree(logits_fn, torch_model: nn.Module, x_nhwc, *, rtol: float = 1e-4,
                       atol: float = 1e-4) -> float:
    """Raises AssertionError unless the jaxadv and PyTorch logits agree; returns the max abs diff."""
    ours = np.asarray(logits_fn(x_nhwc))
    with torch.no_grad():
        theirs = torch_model(nhwc_to_nchw(x_nhwc)).numpy()
    diff = float(np.max(np.abs(ours - theirs)))
    if not np.allclose(ours, theirs, rtol=rtol, atol=atol):
        raise AssertionError(f"jaxadv and PyTorch logits differ by up to {diff:.3g}; the twin "
                             "does not reproduce the model.")
    return diff
