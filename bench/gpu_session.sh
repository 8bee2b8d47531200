#!/usr/bin/env bash
# Everything a lent GPU should measure, as ONE device run (results under $OUT).
#
# Here, once:   echo /.whl/ >> .git/info/exclude; mkdir -p .whl; cp ../shared/gpu-wheels/*.whl .whl/
# Device run:   command "bash bench/gpu_session.sh", carry [".whl"], timeout_s 560
#
# 1. study throughput, K = 1, 2, 4, 8 trials per GPU in one worker vs K worker processes
#    (also the proof that K graph-captured trials train side by side: every trial must complete);
# 2. the train-step benchmark at batch 64 (eager vs graphed, and their exactness);
# 3. the ImageNet loading rate, PIL workers vs GPU JPEG decoding.
# Each step has its own time limit so that a slow one still leaves the other's figures.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 400 python3 bench/study_throughput.py --preset gpu --ks 1,2,4,8 --out "$OUT/study_throughput_gpu.json" \
    2>&1 | tee "$OUT/study_throughput_gpu.log"
timeout 120 python3 bench/step_throughput.py --batches 64 --steps 20 --repeats 3 --out "$OUT/step_throughput_gpu.json" \
    2>&1 | tee "$OUT/step_throughput_gpu.log"
# 3. ImageNet-style loading: PIL in 4 workers vs JPEG batches decoded on the GPU.
timeout 120 python3 bench/imagenet_throughput.py --images 512 --workers 4 --batch 128 --repeats 3 \
    --out "$OUT/imagenet_throughput_gpu.json" 2>&1 | tee "$OUT/imagenet_throughput_gpu.log"
