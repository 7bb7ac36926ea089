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
