# jaxadv set-up and everyday commands. The README's two commands are `make run` and `make test`;
# each creates .venv, installs what it needs (Python packages, Debian's Fashion-MNIST) only if
# missing, then runs. A second run reinstalls nothing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: run test data browser venv venv-test lint bench clean

# The main job: PGD-AT and Int2 trained 300 steps each on Fashion-MNIST, then their robust accuracy
# and interpretation robustness side by side (workdirs/main_job/comparison.md, one HTML report per
# run). A finished run is reused, an interrupted one resumes.
run: venv data
	$(BIN)/python -m experiments.fashion_mnist_robust --main

# Two pytest workers (the CI machine's two cores): the suite is dominated by single-threaded XLA
# compilation, so it runs in about half the time. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: venv-test data browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=20

data: $(FMNIST)

# Debian's chromium renders `jaxadv report` pages in the tests (headless).
browser: /usr/bin/chromium

/usr/bin/chromium:
	$(SUDO) apt-get install -y -q chromium || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium) || \
	  echo "WARNING: chromium could not be installed; the report test skips its browser check."

$(FMNIST):
	$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)

venv: $(VENV)/.core-installed
venv-test: $(VENV)/.test-installed

$(VENV)/.core-installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# The `bench` extra holds the peers the tests cross-check against (PyTorch 2.13.0 CPU, Captum,
# Foolbox, ART, Quantus, PAIR saliency with the scikit-image it imports). torchattacks and
# pyautoattack go in without their dependencies: theirs would pull a multi-GB CUDA build of
# PyTorch.
$(VENV)/.test-installed: $(VENV)/.core-installed
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1 pyautoattack==0.2.0
	touch $@

lint: venv-test
	$(BIN)/ruff check jaxadv experiments tests

clean:
	rm -rf $(VENV) workdirs .pytest_cache
