#!/bin/bash
# The GPU measurements behind results/gpu/ (README, "On a GPU"): the step-speed and training-step
# benchmarks with the PyTorch twins on the same GPU.
#
#   bash experiments/benchmarks/run_gpu.sh OUT_DIR          (TESTS=1 also runs the unit tests there)
#
# Run from the repository root on a machine with one CUDA GPU, JAX with CUDA and PyTorch with CUDA
# (no jaxadv install needed: PYTHONPATH is set to the checkout). The training benchmark reads the
# Fashion-MNIST train IDX files from $JAXADV_FASHION_MNIST_DIR (default: Debian's
# /usr/share/datasets/fashion-mnist). Each stage runs on its own, so one failure keeps the others.
set -u
out=${1:?usage: run_gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/env.txt"
$py -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$out/env.txt"
stage() {  # stage NAME ARGS...: one benchmark run, its log and JSON in $out
  local name=$1; shift
  local s=$SECONDS
  timeout 600 $py -m "$@" --out "$out/$name.json" > "$out/$name.log" 2>&1
  echo "$name: rc $? in $((SECONDS - s)) s"
  tail -16 "$out/$name.log"
}
ss=(experiments.benchmarks.step_speed --torch_device cuda --host_devices 1)
stage step_speed_b128 "${ss[@]}"
stage step_speed_b1024 "${ss[@]}" --batch 1024 --models smallgap,preact_resnet18
stage step_speed_b128_highest "${ss[@]}" --precision highest
stage training_bench experiments.benchmarks.training --torch_device cuda
# With TESTS=1: the unit tests of attacks, attributions and training on the GPU backend (full float32
# through tests/conftest.py), one line per test and the failures' reasons in $out/pytest_gpu.log.
if [ "${TESTS:-0}" = 1 ]; then
  s=$SECONDS
  JAX_PLATFORMS=cuda timeout "${TESTS_TIMEOUT:-480}" $py -m pytest -p no:benchmark -p no:cacheprovider \
    -q -rfE -v --tb=line tests/attacks tests/attributions tests/training > "$out/pytest_gpu.log" 2>&1
  echo "pytest: rc $? in $((SECONDS - s)) s"
  grep -E "^(FAILED|ERROR)|passed|failed" "$out/pytest_gpu.log" | tail -80
fi
