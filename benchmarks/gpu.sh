#!/usr/bin/env bash
# The GPU benchmark set in one go, JSON per measurement plus summary.json in the output directory:
#   benchmarks/gpu.sh <ImageFolder root with train/ and val/> <output dir> [facebookresearch/mae checkout]
# 1. matmul: the device's measured bf16 matmul rate, the ceiling to read MFU against next to the datasheet's;
# 2. vitb: MAE ViT-Base/16 at 224 px in bf16, batch 256: training-step throughput and MFU, eager and
#    torch.compile, side by side with the official code when its checkout is given;
# 3. tiny: MAE ViT-Tiny/4 on CIFAR-10: the training step (fp32, bf16, compiled) against the loader alone
#    (GPU-resident uint8 images with crops on the device, and the worker-process loader);
# 4. budget: one-minute budget runs of the CIFAR config (real `sslvit fit`, loader included, kNN of the result and
#    of its random twin: benchmarks/results.py --quick), eager and compiled.
# STAGES="matmul vitb tiny budget" (the default: all) picks parts, e.g. for a per-command time limit.
set -euo pipefail
DATA=${1:?ImageFolder root with train/ and val/}
OUT_DIR=${2:?output directory}
REFERENCE=${3:-}
PY=${PYTHON:-python3}
STAGES=${STAGES:-matmul vitb tiny budget}
has() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
has matmul && "$PY" - <<'EOF' | tee "$OUT_DIR/matmul.txt"
import torch
n = 8192
a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    a @ b
end.record()
torch.cuda.synchronize()
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}: bf16 {n}^3 matmul "
      f"{2 * n**3 * 20 / (start.elapsed_time(end) / 1e3) / 1e12:.0f} TFLOP/s")
EOF

VITB=(--config configs/mae/imagenet_vit_base.yaml --device cuda --precision bf16-mixed --batch-size 256 --steps 15)
SINGLE=(-- --trainer.devices=1 --trainer.strategy=auto --trainer.precision=bf16-mixed)
if has vitb; then
  "$PY" benchmarks/train_step.py "${VITB[@]}" --output "$OUT_DIR/vitb-eager.json" "${SINGLE[@]}"
  "$PY" benchmarks/train_step.py "${VITB[@]}" --compile model ${REFERENCE:+--reference-mae "$REFERENCE"} \
    --output "$OUT_DIR/vitb-compiled.json" "${SINGLE[@]}"
fi

CIFAR=(--data.dataset imagefolder --data.root "$DATA" --data.train_subset 10000)
TINY=(--config configs/mae/cifar10_vit_tiny.yaml --device cuda --steps 50 --warmup 10)
if has tiny; then
  "$PY" benchmarks/train_step.py "${TINY[@]}" --output "$OUT_DIR/tiny-step-fp32.json" -- "${CIFAR[@]}"
  "$PY" benchmarks/train_step.py "${TINY[@]}" --precision bf16-mixed --output "$OUT_DIR/tiny-step-bf16.json" -- "${CIFAR[@]}"
  "$PY" benchmarks/train_step.py "${TINY[@]}" --precision bf16-mixed --compile model \
    --output "$OUT_DIR/tiny-step-bf16-compiled.json" -- "${CIFAR[@]}"
  "$PY" benchmarks/train_step.py "${TINY[@]}" --loader --output "$OUT_DIR/tiny-loader-on-device.json" -- "${CIFAR[@]}"
  "$PY" benchmarks/train_step.py "${TINY[@]}" --loader --output "$OUT_DIR/tiny-loader-workers.json" -- "${CIFAR[@]}" \
    --data.on_device=false --data.num_workers=8
fi

if has budget; then
  for compile in false model; do
    "$PY" benchmarks/results.py --methods mae --quick --data-root "$DATA" --minutes 1 --train-images 10000 \
      --run-dir "${TMPDIR:-/tmp}/sslvit-budget-$compile" --output "$OUT_DIR/budget-$compile" \
      -- --trainer.precision=bf16-mixed --model.init_args.compile=$compile
    cp "$OUT_DIR/budget-$compile/mae-seed0.json" "$OUT_DIR/budget-$compile.json"
  done
fi

"$PY" - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"}
if (out / "matmul.txt").exists():
    summary["matmul"] = (out / "matmul.txt").read_text().strip()
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {out / 'summary.json'}")
EOF
