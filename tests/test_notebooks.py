"""Every notebook runs top to bottom (nbclient, a fresh python3 kernel, cwd notebooks/); a cell
that raises fails the test with the cell's traceback."""

import pathlib
import re

import pytest

from tests.conftest import FAST_COMPILE_ENV

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# Smaller runs for the suite, injected after each notebook's `parameters` cell as papermill does
# (the notebooks' own values are what users run; the code path is the same).
QUICK = {
    "01_quickstart": "train_steps = 40\nn_eval = 50",
    "02_interpretation_discrepancy_and_isa": "n_isa = 8\nisa_rounds = 3\nfallback_train_steps = 30",
    "03_int_training_vs_adversarial_training": "train_steps = 15\nn_eval = 50",
    "04_promotion_suppression": "fallback_train_steps = 40",
    "05_roi_roa_neutralisation": "fallback_train_steps = 40",
}


def _inject_parameters(nb, source, nbformat):
    """Inserts ``source`` after the cell tagged ``parameters`` (papermill's convention)."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "expected exactly one cell tagged 'parameters'"
    for name in re.findall(r"^(\w+) =", source, flags=re.M):  # only names the notebook defines
        assert re.search(rf"^{name} =", nb.cells[tagged[0]].source, flags=re.M), name
    cell = nbformat.v4.new_code_cell(source)
    cell["id"] = "injected-parameters"
    nb.cells.insert(tagged[0] + 1, cell)


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert names == {"01_quickstart", "02_interpretation_discrepancy_and_isa",
                     "03_int_training_vs_adversarial_training", "04_promotion_suppression",
                     "05_roi_roa_neutralisation", "06_scaling"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the kernel inherits the environment: give it a user's (one CPU device, default unrolling)
    for var in ("XLA_FLAGS", "JAXADV_UNROLL_MAX_STEPS", "JAXADV_FASHION_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    # ... except that XLA compiles with most optimisations off (the same program; compile time
    # dominates these quick runs: all six 114 -> 93 s, one at a time).
    for var, value in FAST_COMPILE_ENV.items():
        monkeypatch.setenv(var, value)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: outputs must be stripped in git"
    if path.stem in QUICK:
        _inject_parameters(nb, QUICK[path.stem], nbformat)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells
                 if cell.cell_type == "code" for out in cell.outputs)
    assert images >= 1, f"{path.name} showed no figure"
