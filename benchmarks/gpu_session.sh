#!/usr/bin/env bash
# The GPU check of issue 7 as one prepared script, for a lent machine with CUDA PyTorch and no
# package index (wheels from benchmarks/gpu_carry.sh in .whl/). Writes under ${OUT:-/tmp/gpu-out}.
# `gpu_session.sh profile`: the packed full fine-tune as measured before, a profile of its steps
# 4-6, the same with GELU's fused tanh kernel (the same function as GPT-J's gelu_new), and LoRA.
# `gpu_session.sh final`: what the profile pointed to: fused GELU and 64 examples a micro-batch
# (half the micro-batches, so half the host work and syncs a step), full and LoRA, and the full
# fine-tune with SDPA limited to the memory-efficient kernel (cuDNN's costs ~5 ms of host time a call).
# `gpu_session.sh onestep`: with the faster packing (2026-11-30), the last case again (64 a
# micro-batch), then the global batch of 128 as one micro-batch (no accumulation, as the GPU search
# spaces run), full and LoRA, and the same full fine-tune with 8 layers instead of 4.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then  # set it where the packages are installed already
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, deepspeed, transformers; print(torch.__version__, deepspeed.__version__, transformers.__version__)" 2>&1 | tail -1 | tee -a "$OUT/device.txt"
packed='{"collate":"pack","per_device_batch":32,"global_batch":128}'
fused='{"activation_function":"gelu_pytorch_tanh"}'
gw() {
  timeout "$1" python3 benchmarks/gpu_worker.py --out /tmp/gw "${@:2}" ${GW_ARGS:-} 2>&1 | grep -v -i "warn" | tail -3
  # after every call: what finished comes back even if a later case runs past the device call's limit
  if [ -f /tmp/gw/results.jsonl ]; then cp /tmp/gw/results.jsonl "$OUT/results.jsonl"; fi
}
if [ "${1:-profile}" = profile ]; then
  gw 200 --rows 1800 --cases full_bf16 --set "$packed"
  gw 150 --rows 1000 --cases full_bf16 --set "$packed" --profile
  cp /tmp/gw/full_bf16_profile/profile.txt "$OUT/profile_full_bf16.txt"
  gw 200 --rows 1800 --cases full_bf16 --set "$packed" --model-set "$fused"
  gw 150 --rows 1800 --cases lora_bf16 --set "$packed" --model-set "$fused"
elif [ "$1" = onestep ]; then
  half='{"collate":"pack","per_device_batch":64,"global_batch":128}'
  whole='{"collate":"pack","per_device_batch":128,"global_batch":128}'
  gw 200 --rows 3600 --cases full_bf16 --set "$half" --model-set "$fused"  # builds the model first
  gw 150 --rows 3600 --cases full_bf16 --set "$whole" --model-set "$fused"
  gw 200 --rows 3600 --cases lora_bf16 --set "$whole" --model-set "$fused"  # with the reload: 135 s
  gw 240 --rows 3600 --layers 8 --cases full_bf16 --set "$whole" --model-set "$fused"
else
  big='{"collate":"pack","per_device_batch":64,"global_batch":128}'
  gw 150 --rows 1800 --cases full_bf16 --set "$big" --model-set "$fused"
  gw 100 --rows 1800 --cases lora_bf16 --set "$big" --model-set "$fused"
  export SDPA=efficient
  gw 150 --rows 1800 --cases full_bf16 --set "$big" --model-set "$fused"
fi
