#!/usr/bin/env bash
# Every GPU measurement of issue 17 and the CUDA tests in one run (under 8 minutes on one GPU), one JSON out.
#
#   bash bench/gpu_all.sh [OUT.json]             # on a machine with a CUDA GPU (default OUT: gpu_all.json)
#   bash bench/gpu_all.sh --dry-run [OUT.json]   # the same steps on the CPU with tiny sizes (tests this script)
#
# Steps (each with its own time limit; a failed or timed-out step is recorded and the others still run):
#   tests      CUDA tests: tests/test_cuda.py (GPU vs CPU, training, resume, demo) and tests/test_gpu_pipeline.py
#              (MTCNN on the GPU finds the CPU path's faces, keypoints <= 0.5 px, inputs <= 2/255; CUDA events)
#   demo       the demo goal: 2,000 JPEGs (the shared photos resized to 1024 px on the longer side, quality 90),
#              MTCNN on the GPU, batch 64, bf16: img/s end to end and per stage, share of time the GPU is busy
#   baseline   the same photos (200 of them) one at a time in fp32: the reference for the speed-up
#   train      training step at batch 16 and the largest batch that fits (bf16): img/s, fraction of the bf16 peak
# Python: $PYTHON, else .venv/bin/python, else python3. Photos: ../shared/data/faces or shared/data/faces,
# else scikit-image's astronaut portrait.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-gpu_all.json}"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if (( DRY )); then
    DEV=cpu; N=4; BASE_N=2; BS=2; ARCH=iresnet18; GPU_PIPELINE=(--gpu-pipeline)
    T_TESTS=300; T_DEMO=300; T_BASE=300; T_TRAIN=300
    TRAIN_ARGS=(--arch iresnet18 --batches 2 --steps 1 --largest 0)
    TESTS=(tests/test_gpu_pipeline.py -m "not slow")
else
    DEV=cuda; N=2000; BASE_N=200; BS=64; ARCH=iresnet100; GPU_PIPELINE=()
    T_TESTS=150; T_DEMO=150; T_BASE=60; T_TRAIN=90   # 7.5 minutes if every step ran into its limit
    TRAIN_ARGS=(--arch iresnet100 --batches 16 --steps 10 --largest 1024)
    TESTS=(tests/test_cuda.py tests/test_gpu_pipeline.py)
fi

FACES=""
for d in ../shared/data/faces shared/data/faces; do
    if [[ -d "$d" ]]; then FACES="$d"; break; fi
done
if [[ -z "$FACES" ]]; then
    FACES="$TMP/faces"; mkdir -p "$FACES"
    "$PY" -c "import sys, cv2, skimage.data; cv2.imwrite(sys.argv[1], skimage.data.astronaut()[..., ::-1])" "$FACES/astronaut.png"
fi

: > "$TMP/steps.tsv"
step() {  # step NAME LIMIT_S COMMAND...: run it, keep its log, record exit code and seconds
    local name="$1" limit="$2"; shift 2
    local start end rc
    start=$(date +%s%N)
    timeout "$limit" "$@" > "$TMP/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( (end - start) / 1000000 ))" >> "$TMP/steps.tsv"  # milliseconds
    echo "== $name: exit $rc"
    tail -n 5 "$TMP/$name.log"
}

step tests "$T_TESTS" "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider --junitxml "$TMP/junit.xml"
step demo "$T_DEMO" "$PY" bench/demo.py --device "$DEV" -i "$FACES" -n "$N" --resize 1024 --batch-size "$BS" \
    --precision bf16 --arch "$ARCH" --no-baseline --no-int8 "${GPU_PIPELINE[@]}" --json "$TMP/demo.json"
step baseline "$T_BASE" "$PY" bench/demo.py --device "$DEV" -i "$FACES" -n "$BASE_N" --resize 1024 --arch "$ARCH" \
    --only none --no-int8 --json "$TMP/baseline.json"
step train "$T_TRAIN" "$PY" bench/train_gpu.py --device "$DEV" "${TRAIN_ARGS[@]}" --json "$TMP/train.json"

"$PY" bench/gpu_all_collect.py "$TMP" "$OUT" --dry-run "$DRY"
