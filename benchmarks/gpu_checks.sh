#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one run, for a session that is lent a GPU (device tool):
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# The GPU machine has no network: packages it lacks (timm, captum, safetensors, torch-lucent, kornia, …; see the
# device README's KINDS.md) travel as wheels in .whl/ (pip download … -d .whl, as that README says), installed
# into /tmp/site here. It prints: featurevis ResNet-50 layer3 (64 channels, 224 px) against Lucent one by one
# (issue 3, target >= 50x), fine-tuning throughput on CUDA (issue 5), all-blocks Grad-CAM on CUDA (issue 4), and
# the CUDA render tests. Results also go to $OUT (if set) as text files.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_checks}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
python - <<'PY' | tee "$out/cuda.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
timeout 300 python benchmarks/bench_featurevis.py --suite gpu --lucent-channels 8 2>&1 | tee "$out/featurevis_gpu.txt"
timeout 120 python benchmarks/bench_attribution.py --device cuda 2>&1 | tee "$out/attribution_gpu.txt"
timeout 150 python benchmarks/bench_compare.py --device cuda --images 200 --sizes 100 2>&1 | tee "$out/compare_gpu.txt"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_featurevis_render.py tests/test_featurevis_fold.py \
  tests/test_concurrency.py 2>&1 | tail -3 | tee "$out/tests_gpu.txt"
