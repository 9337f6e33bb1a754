#!/usr/bin/env bash
# The GPU calibration as one prepared run, for a lent H100/H200 (the device tool runs it from the
# repository root; its image has torch, numpy, pyyaml and rich, which is all `calibrate` imports):
#     bash benchmarks/gpu_calibrate.sh          # timeout about 540 s; kernels take ~15 s, setup more
# Writes under $OUT (default ./gpu-out): nvidia-smi.txt, cuda-measured.json (BF16 and FP8 where
# torch._scaled_mm runs), calibrate.txt and holdout.txt. Commit the JSON as
# hardware/calibrations/<gpu>.json and point the preset's `calibration` at it.
set -euo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/calibrate.txt"
"$python" run_sim.py calibrate --device cuda --out "$OUT/cuda-measured.json" 2>&1 | tee -a "$OUT/calibrate.txt"
"$python" benchmarks/calibration_holdout.py "$OUT/cuda-measured.json" 2>&1 | tee "$OUT/holdout.txt"
