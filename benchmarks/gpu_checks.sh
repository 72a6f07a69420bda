#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one run, for a session that is lent a GPU (device tool):
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# The GPU machine has no network: packages it lacks (timm, captum, safetensors, torch-lucent, kornia, …; see the
# device README's KINDS.md) travel as wheels in .whl/ (pip download … -d .whl, as that README says), installed
# into /tmp/site here. It prints: featurevis ResNet-50 layer3 (64 channels, 224 px) against Lucent one by one
# (issue 3, target >= 50x), fine-tuning throughput on CUDA (issue 5), all-blocks Grad-CAM on CUDA (issue 4), the
# freeze sweep against one train-everything run on CUDA (issue 11), the
# Ray back end's figures (issue 14: ResNet-50 whole-network atlas time per GPU, extrapolated from one task per block;
# 1 vs N Ray workers; torch.compile on/off of the render step), and the CUDA render tests. Results also go to $OUT
# (if set) as text files. Ray's wheel (~79 MB) is larger than what the device tool carries (64 MiB): where Ray is
# not installed the scaling part prints 'skipped' and the rest runs. bench_ray's part is capped at 200 s (about 2
# minutes expected on one H200, not yet run on one).
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
timeout 90 python benchmarks/bench_sweep.py --device cuda --skip-defaults 2>&1 | tee "$out/sweep_gpu.txt"
timeout 200 python benchmarks/bench_ray.py --suite gpu 2>&1 | grep -v -E '^[0-9-]+ [0-9:,]+\s+(INFO|WARNING)' \
  | tee "$out/ray_gpu.txt"
timeout 120 python -m pytest -q -p no:cacheprovider tests/featurevis/test_featurevis_render.py tests/featurevis/test_featurevis_fold.py \
  tests/test_concurrency.py 2>&1 | tail -3 | tee "$out/tests_gpu.txt"
