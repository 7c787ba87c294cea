#!/usr/bin/env bash
# The GPU window, prepared: what runs on the device machine, from the repository root there
# (README, "GPU run"). Here first, on the CPU (gpu_run/ is gitignored; it travels only as carry):
#   python -m pauserec gpu prepare --dataset beauty --out gpu_run
# Then the device tool's calls, each right after the last (a call carries at most 64 MiB; the
# machine stays warm ~30 s after a call, and a cold one starts bare):
#   call 1            bash gpu/oneshot.sh preflight          carry ["gpu_run/part1"]  timeout_s 90
#   call 2, at once   bash gpu/oneshot.sh run                carry ["gpu_run/run"]    timeout_s 330
#   call 3, at once,  BUDGET=240 bash gpu/oneshot.sh run     carry ["gpu_run/run"]    timeout_s 270
#     only if 2 failed or was cut short (it resumes 2; on a cold machine: calls 1 and 2 again)
# then give_back. Call 1 keeps the GGUF's first part in /tmp, installs the gguf wheel the image
# lacks, prints the versions with the KV-cache keyword, the GPU, and a 20-second smoke test of the
# run's code on it; call 2 is the run (--budget-s 300), whose $OUT brings back results.tar.gz,
# results.json and run.log, also when it is cut short. Time plan of the 15-minute window: start
# 1-2 min, call 1 <= 1.5 min, call 2 <= 5.5 min, the rerun <= 4.5 min: 13.5 min at worst.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=/tmp/site:.  # the carried wheels, then this repository
KEEP=/tmp/pauserec-part1       # survives between calls while the machine is warm
export OUT=${OUT:-/tmp/pauserec-out}

case "${1:-}" in
  preflight)
    mkdir -p "$KEEP" "$OUT"
    cp gpu_run/part1/backbone.gguf.part1 "$KEEP/"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site gpu_run/part1/wheels/*.whl
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -m pauserec gpu preflight --seconds 20 2>&1 | tee "$OUT/preflight.log"
    ;;
  run)
    if [ ! -f "$KEEP/backbone.gguf.part1" ] || [ ! -d /tmp/site/gguf ]; then
      echo "error: call 1 (bash gpu/oneshot.sh preflight) has not run on this machine" >&2
      exit 2
    fi
    python3 -m pauserec gpu run gpu_run/run --part1 "$KEEP/backbone.gguf.part1" \
      --budget-s "${BUDGET:-300}"
    ;;
  *)
    echo "error: usage: bash gpu/oneshot.sh preflight|run" >&2
    exit 2
    ;;
esac
