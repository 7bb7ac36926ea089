"""Figures for the analyses; every function draws on a given matplotlib ``ax`` and returns it."""

from collections.abc import Mapping, Sequence


def robustness_curves(ax, epsilons: Sequence[float], accuracies: Mapping[str, Sequence[float]], *,
                      title: str = "", ylabel: str = "robust accuracy (%)"):
    """One line per method: accuracy (in [0, 1], drawn in percent) against eps."""
    for name, acc in accuracies.items():
        ax.plot(list(epsilons), [100 * a for a in acc], marker="o", label=name)
    ax.set_xlabel("l-inf eps")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def bars(ax, values: Mapping[str, float], *, ylabel: str, title: str = "", ylim=None):
    """A bar per method."""
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax


def curves(ax, x: Sequence[float], ys: Mapping[str, Sequence[float]], *, xlabel: str,
           ylabel: str, title: str = "", logy: bool = False):
    """One line per entry of ``ys`` against ``x`` (e.g. ISA discrepancy or AAI Kendall tau
    against eps); a sequence of x per entry is accepted as ``ys[name] = (x_i, y_i)``, a pair of
    equally long sequences (a 2-tuple of numbers is two y values)."""
    def is_pair(v):
        return (isinstance(v, tuple) and len(v) == 2 and all(
            hasattr(p, "__len__") and not isinstance(p, str) for p in v) and len(v[0]) == len(v[1]))

    for name, v in ys.items():
        xs, vs = (v if is_pair(v) else (x, v))
        ax.plot(list(xs), list(vs), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(ys) > 1:
        ax.legend(fontsize="small")
    return ax


def margin_scatter(ax, bound: Sequence[float], discrepancy: Sequence[float], *, title: str = "",
                   label: str = "attacked images"):
    """Boopathy et al.'s section 1.4 check: discrepancy against the margin bound
    (f_t - f_t')(x) / 2, with the line y = x that no successful targeted attack can go under."""
    import numpy as np

    b, d = np.asarray(bound, float), np.asarray(discrepancy, float)
    ax.scatter(b, d, s=10, alpha=0.7, label=label)
    hi = float(max(np.nanmax(b, initial=0.0), np.nanmax(d, initial=0.0))) * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], color="k", lw=1, ls="--", label="bound: D = (f_t - f_t') / 2")
    ax.set_xlabel("(f_t(x) - f_t'(x)) / 2")
    ax.set_ylabel("two-class l1 discrepancy / map size")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def map_overlay(ax, image, saliency, *, title: str = "", alpha: float = 0.5, cmap: str = "jet"):
    """An image (H, W) or (H, W, C) in [0, 1] with a map (h, w), scaled to [0, 1], over it."""
    import numpy as np

    img = np.asarray(image, float)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    sal = np.asarray(saliency, float)
    h, w = img.shape[:2]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    rng = np.ptp(sal)
    # the map is stretched over the image and interpolated bilinearly (as CAM figures are)
    ax.imshow((sal - sal.min()) / rng if rng > 0 else np.zeros_like(sal), cmap=cmap, alpha=alpha,
              extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def histograms(ax, values: Mapping[str, Sequence[float]], *, bins=20, xlabel: str,
               title: str = "", value_range=None):
    """Overlaid step histograms, one per entry (e.g. the promotion ratio per attack)."""
    import numpy as np

    for name, v in values.items():
        v = np.asarray(v, float)
        ax.hist(v[np.isfinite(v)], bins=bins, range=value_range, histtype="step", lw=1.5,
                label=name, density=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def pse_overlay(axes, ov: Mapping, *, title: str = ""):
    """Four panels (a sequence of 4 axes) for one example of Xu et al.'s promotion-suppression
    analysis: the image with the CAM regions of t0 (blue) and t (red), the perturbation, per-pixel
    promotion and per-pixel suppression (each with its CAM region). ``ov`` holds (H, W) arrays
    ``x``, ``delta``, ``promotion``, ``suppression``, ``m_src`` and ``m_tgt``."""
    import numpy as np

    panels = [("x", "gray", None), ("delta", "seismic", None),
              ("promotion", "seismic", "m_tgt"), ("suppression", "seismic", "m_src")]
    for ax, (k, cmap, contour) in zip(axes, panels, strict=True):
        v = np.asarray(ov[k], float)
        lim = float(np.max(np.abs(v))) or 1.0
        ax.imshow(v, cmap=cmap, vmin=0 if k == "x" else -lim, vmax=1 if k == "x" else lim)
        for mk, color in ((("m_src", "tab:blue"), ("m_tgt", "tab:red")) if contour is None
                          else ((contour, "k"),)):
            ax.contour(np.asarray(ov[mk], float), levels=[0.5], colors=color, linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title} {k}" if k == "x" else k, fontsize="x-small")
    return axes


def sensitivity_iou_scatter(ax, sensitivity, max_iou, interpretable, *, title: str = ""):
    """Scatter of s_u against max IoU_u, interpretable units highlighted."""
    import numpy as np

    s, m, i = (np.asarray(v) for v in (sensitivity, max_iou, interpretable))
    ax.scatter(m[~i], s[~i], s=10, alpha=0.6, label="not interpretable")
    ax.scatter(m[i], s[i], s=10, alpha=0.8, label="interpretable (IoU > 0.04)")
    ax.set_xlabel("max IoU over concepts")
    ax.set_ylabel("sensitivity s_u")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="x-small")
    return ax


def show_image(ax, image, *, title=""):
    """A grayscale image (H, W) or (H, W, 1) in [0, 1], without axes."""
    import numpy as np

    ax.imshow(np.asarray(image)[..., 0] if np.ndim(image) == 3 else image, cmap="gray",
              vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    return ax


def map_image(ax, m, *, title="", cmap="viridis"):
    """A map (h, w) as a heat image, without axes."""
    import numpy as np

    ax.imshow(np.asarray(m), cmap=cmap)
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    return ax


def roi_roa_overlay(ax, image, roi, roa, *, title="", alpha=0.55):
    """Grey image with the four isolation regions coloured: RoI only blue, RoA only red, both
    magenta, rest untouched (Chattopadhyay et al. 2020's isolation; masks (H, W) bool)."""
    import numpy as np

    img = np.asarray(image)
    grey = img[..., 0] if img.ndim == 3 else img
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    roi, roa = np.asarray(roi, bool), np.asarray(roa, bool)
    colours = {(True, False): (0.1, 0.3, 1.0), (False, True): (1.0, 0.15, 0.1),
               (True, True): (0.9, 0.1, 0.9)}
    for (i, a), c in colours.items():
        sel = (roi == i) & (roa == a)
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(c)
    ax.imshow(np.clip(rgb, 0, 1))
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    return ax


def recovery_curves(ax, p_values, rates, *, xlabel="p_A", ylabel="recovery rate (%)",
                    title=""):
    """Recovery rate (in [0, 1], drawn in percent; None for missing) against a region fraction."""
    import numpy as np

    for name, r in rates.items():
        ax.plot(list(p_values), [np.nan if v is None else 100 * v for v in r], marker="o",
                label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize="x-small")
    return ax
