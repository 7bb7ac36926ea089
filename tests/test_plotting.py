"""Figures draw what they claim on a headless (Agg) axis."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxadv import plotting  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_curves_and_robustness(ax):
    plotting.curves(ax, [0.1, 0.2], {"a": [1.0, 0.5], "b": ([0.1, 0.3], [2.0, 1.0])},
                    xlabel="eps", ylabel="D", logy=True)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [0.1, 0.3])
    ax.clear()
    # a 2-tuple of numbers is two y values at the shared x, not an (x, y) pair
    plotting.curves(ax, [0.1, 0.2], {"a": (0.9, 0.4)}, xlabel="eps", ylabel="acc")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.9, 0.4])
    ax.clear()
    plotting.robustness_curves(ax, [0, 0.1], {"m": [0.9, 0.5]})
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [90, 50])


def test_margin_scatter_draws_points_and_the_bound(ax):
    plotting.margin_scatter(ax, [0.1, 0.2, 0.3], [0.2, 0.3, 0.5])
    assert ax.collections[0].get_offsets().shape == (3, 2)
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), line.get_ydata())  # y = x


def test_map_overlay_upsamples_the_map(ax):
    plotting.map_overlay(ax, np.zeros((28, 28, 1)), np.arange(49.0).reshape(7, 7), title="cam")
    imgs = ax.get_images()
    assert len(imgs) == 2 and imgs[1].get_array().shape == (7, 7)
    assert imgs[1].get_extent() == [-0.5, 27.5, 27.5, -0.5]  # stretched over the image
    assert float(imgs[1].get_array().max()) == 1.0


def test_histograms(ax):
    plotting.histograms(ax, {"fgsm": [0.1, 0.2, np.nan], "cw": [0.9]}, xlabel="r",
                        value_range=(0, 1))
    assert len(ax.patches) == 2


def test_pse_overlay_and_sensitivity_scatter():
    fig, axes = plt.subplots(1, 4)
    m = np.zeros((8, 8))
    m[2:5, 2:5] = 1
    rng = np.random.default_rng(0)
    ov = {"x": rng.random((8, 8)), "delta": rng.normal(size=(8, 8)), "m_src": m, "m_tgt": m.T,
          "promotion": rng.normal(size=(8, 8)), "suppression": rng.normal(size=(8, 8))}
    plotting.pse_overlay(axes, ov, title="7->1")
    assert all(len(ax.get_images()) == 1 for ax in axes)
    assert len(axes[0].collections) >= 2  # the two CAM contours
    plt.close(fig)
    fig, ax = plt.subplots()
    plotting.sensitivity_iou_scatter(ax, [0.1, 0.2, 0.3], [0.01, 0.05, 0.1], [False, True, True])
    assert [c.get_offsets().shape[0] for c in ax.collections] == [1, 2]
    plt.close(fig)


def test_roi_roa_overlay_colours_the_four_regions(ax):
    roi = np.zeros((4, 4), bool)
    roa = np.zeros((4, 4), bool)
    roi[0, :2] = True
    roa[0, 1:3] = True
    plotting.roi_roa_overlay(ax, np.zeros((4, 4, 1)), roi, roa, alpha=1.0)
    rgb = ax.get_images()[0].get_array()
    np.testing.assert_allclose(rgb[0, 0], (0.1, 0.3, 1.0))  # RoI only: blue
    np.testing.assert_allclose(rgb[0, 1], (0.9, 0.1, 0.9))  # both: magenta
    np.testing.assert_allclose(rgb[0, 2], (1.0, 0.15, 0.1))  # RoA only: red
    np.testing.assert_allclose(rgb[1, 1], (0.0, 0.0, 0.0))  # rest: the image


def test_show_map_and_recovery_curves(ax):
    plotting.show_image(ax, np.ones((5, 5, 1)), title="x")
    plotting.map_image(ax, np.eye(3))
    assert len(ax.get_images()) == 2
    ax.clear()
    plotting.recovery_curves(ax, [0.1, 0.2], {"oracle": [0.5, None]})
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [50.0, np.nan])
