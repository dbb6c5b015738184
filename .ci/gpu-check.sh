#!/usr/bin/env bash
# The CUDA checks (issues #3 and #6), for a lent GPU machine; CI has no GPU and never runs this.
# Expects wheels of what that machine lacks in .whl/ (jsonschema and its needs, torchode and its
# needs) and writes logs to $OUT. Run from the repository root: bash .ci/gpu-check.sh
# The wheels, fetched where pip can reach an index (the GPU machine could not), for Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl jsonschema==4.26.0 referencing==0.37.0 \
#     jsonschema-specifications==2025.9.1 rpds-py==2026.9.1 torchode==1.0.1 torchtyping==0.1.5 typeguard==2.13.3
set -o pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, onnx, onnxruntime, jsonschema, safetensors; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__)"
echo "== CUDA tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/solvers/test_solver_cuda.py tests/train/test_train_cuda.py 2>&1 | tee "$OUT/cuda-tests.log" | tail -25
echo "== odespec train + build on cuda (CLI)"
( timeout 120 python3 -m odespec train specs/ode_demo_train.yaml --device cuda --iterations 100 -o /tmp/run-demo \
  && timeout 120 python3 -m odespec build specs/ode_demo_train.yaml --weights /tmp/run-demo/model.safetensors --device cuda -o /tmp/out-demo \
  && tail -3 /tmp/run-demo/metrics.jsonl ) 2>&1 | tee "$OUT/cli.log" | tail -12
echo "== benchmark"
timeout 300 python3 benchmarks/solvers_cuda_bench.py --repeat ${REPEAT:-7} --only ${BENCH_ONLY:-forward,grad,memory,sync} 2>&1 | tee "$OUT/cuda-bench.txt"
