#!/bin/sh
# The GPU check, on a machine with an NVIDIA GPU: parity and speed of the GPU
# helper (`cargo xtask gpu-helper` builds it; it needs no Rust here, only the
# NVIDIA driver and the CUDA 13 libraries, which a Python environment with
# PyTorch's CUDA 13 wheels also provides).
#
#   tools/gpu-check.sh HELPER [OUT_DIR]
#
# Writes OUT_DIR/report.md (and the JSON each step printed), run from the
# repository's root (it reads the test fixtures).
set -u
HELPER=${1:?usage: tools/gpu-check.sh HELPER [OUT_DIR]}
OUT=${2:-gpu-check}
mkdir -p "$OUT"
REPORT="$OUT/report.md"
FIXTURE=engine/tests/fixtures/musicgen-tiny

# The CUDA libraries of any Python environment's nvidia wheels, after the
# system's own.
for d in $(python3 - <<'EOF' 2>/dev/null
import glob, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for lib in sorted(glob.glob(r + "/nvidia/*/lib")) + sorted(glob.glob(r + "/nvidia/cu13/lib")):
        print(lib)
EOF
); do
  LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

{
  echo "# GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
  echo "- helper: $HELPER ($(stat -c %s "$HELPER") bytes)"
  echo
} > "$REPORT"

step() {
  name=$1
  shift
  echo "== $name: $*" >&2
  start=$(date +%s)
  if "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; then
    echo "## $name ($(( $(date +%s) - start )) s)" >> "$REPORT"
  else
    echo "## $name: FAILED ($(tail -n 3 "$OUT/$name.log" | tr '\n' ' '))" >> "$REPORT"
  fi
  echo '```' >> "$REPORT"
  if [ -s "$OUT/$name.json" ]; then
    cat "$OUT/$name.json" >> "$REPORT"
  else
    tail -n 5 "$OUT/$name.log" >> "$REPORT"
  fi
  echo '```' >> "$REPORT"
}

# Parity (the device's logits against the CPU decoder's: the tiny fixture's
# weights and random musicgen-small / -medium ones) and decoder speed with
# and without guidance, in f32, f16 and bf16; then musicgen-small through
# the helper's pipe, as the plugin and the CLI drive it, frames only and
# with the audio decoded in the helper.
step device "$HELPER" bench-device --device cuda --frames 500 --dtypes f32,f16,bf16 \
  --medium --checkpoint "$FIXTURE" --through-helper
# Training on the device: the same steps on the CPU and the GPU (losses and
# trained values), then steps per second there.
step train "$HELPER" bench-train --device cuda --steps 10
# CLIP's vision tower on the device against the CPU's (the VidMusician
# engine's 25 fps reading of a video runs it): agreement and frames per
# second, in each type.
step clip "$HELPER" bench-clip --device cuda --dtypes f32,f16,bf16 --batches 50
# EnCodec's decoder on the device against the CPU's kernels: 10 s of audio.
step codec "$HELPER" bench-codec --device cuda --frames 500
# The same model through transformers on the same GPU, where a Python with it
# is here.
if python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  for dt in float32 float16; do
    step "transformers-$dt" python3 tools/bench_transformers.py --device cuda --dtype "$dt" \
      --frames 500
  done
else
  echo "## transformers: skipped (no Python with torch, transformers and CUDA here)" >> "$REPORT"
fi
cat "$REPORT"
