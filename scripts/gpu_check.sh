#!/usr/bin/env bash
# The CUDA proof in one command, offline, about 6-8 minutes on one GPU:
#
#   bash scripts/gpu_check.sh [OUT]        # default OUT: gpu_check/
#
# Stages (each with its own time limit; a failure or timeout is recorded and the next stage runs):
#   env        GPU, driver, torch and CUDA versions
#   pytest     pytest -m cuda (tests/test_cuda.py and the other tests marked cuda)
#   data       the generated camouflage set at 384 px and a ViT-B-shaped random DINOv3
#   train      2 epochs in bf16 through train.py (images/s, peak GPU memory)
#   test       test.py --ckpt on the generated benchmark
#   benchmark  scripts/benchmark.py --device cuda --batch 8,16,32 (ratios, data-loader waiting share)
#   efficiency scripts/efficiency.py --device cuda: every shipped config's parameters, GFLOPs, training
#              peak memory at its batch, inference images/s at batch 1 and 8 (docs/performance.md)
# Everything is written under OUT; OUT/summary.md is one table of all of it (rewritten after each stage).
#
# Without a CUDA device it reports "no CUDA device" and exits 0 having run nothing.
# GPU_CHECK_DEVICE=cpu runs every stage on the CPU at tiny sizes: the dry run that proves the script.
# GPU_CHECK_SKIP="pytest benchmark" leaves those stages out (recorded as skipped).
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${1:-gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
DEVICE=${GPU_CHECK_DEVICE:-cuda}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false GPU_CHECK_DEVICE=$DEVICE
WORK=$OUT/work
STAGES=$OUT/stages.tsv
: >"$STAGES"

summary() { "$PY" scripts/gpu_check_report.py summary "$OUT" >/dev/null 2>>"$OUT/summary.err" || true; }

# stage NAME LIMIT_S COMMAND...: run with a time limit, output in OUT/NAME.log, status in OUT/stages.tsv
stage() {
    local name=$1 limit=$2
    shift 2
    local t0 rc status took
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        printf '%s\tskipped (GPU_CHECK_SKIP)\t0\n' "$name" >>"$STAGES"
        return 0
    fi
    t0=$(date +%s)
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    took=$(($(date +%s) - t0))
    case $rc in
        0) status=ok ;;
        124 | 137) status="timeout after ${limit} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$took" >>"$STAGES"
    echo "   $status in ${took} s (log: $OUT/$name.log)"
    summary
    return $rc
}

if ! "$PY" -c "import torch" 2>"$OUT/env.err"; then
    echo "gpu_check: '$PY' cannot import torch (see $OUT/env.err); set PYTHON or run make install" >&2
    exit 1
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: nothing was run (GPU_CHECK_DEVICE=cpu runs every stage on the CPU as a dry run)"
    printf '# GPU check\n\nno CUDA device: nothing was run.\n' >"$OUT/summary.md"
    exit 0
fi

if [ "$DEVICE" = cuda ]; then
    SIZE=384 N_TRAIN=1000 N_TEST=100 BATCH=16 ENCODER=(--hidden 768 --layers 12 --heads 12)
    MODEL=() BENCH=(--batch 8,16,32 --repeats 10 --warmup 3)
    LIMITS=(pytest 300 data 60 train 150 test 60 benchmark 300 efficiency 900)
    EFFICIENCY=()  # every shipped config at its own size and batch
    WORKERS=$("$PY" -c "import os; print(min(8, os.cpu_count() or 1))")
else  # dry run: the same stages at sizes a CPU finishes in a few minutes
    SIZE=64 N_TRAIN=12 N_TEST=4 BATCH=4 ENCODER=(--hidden 64 --layers 4 --heads 2)
    MODEL=(model.encoder.layers=[1,2,3,4] model.channels=16 model.context_heads=2)
    BENCH=(--batch 2,4 --tiny --threads 1)
    LIMITS=(pytest 900 data 300 train 300 test 300 benchmark 900 efficiency 300)
    EFFICIENCY=(configs/demo.yaml --repeats 1)
    WORKERS=2
fi
declare -A LIMIT
for ((i = 0; i < ${#LIMITS[@]}; i += 2)); do LIMIT[${LIMITS[i]}]=${LIMITS[i + 1]}; done

stage env 120 "$PY" scripts/gpu_check_report.py env "$OUT/env.json" "$DEVICE"
stage pytest "${LIMIT[pytest]}" "$PY" -m pytest -m cuda -q -rs tests -p no:cacheprovider --junitxml="$OUT/pytest.xml"

rm -rf "$WORK"
stage data "${LIMIT[data]}" bash -c '"$1" scripts/make_synthetic_cod.py --out "$2/data" --train "$3" --test "$4" --size "$5" --seed 0 &&
    "$1" scripts/make_tiny_dinov3.py "$2/encoder" "${@:6}"' _ "$PY" "$WORK" "$N_TRAIN" "$N_TEST" "$SIZE" "${ENCODER[@]}"

RUN=$WORK/run
stage train "${LIMIT[train]}" "$PY" scripts/gpu_check_report.py train "$OUT/train_peak.json" -- \
    --config e2net_dinov3.yaml "model.encoder.pretrained_path=$WORK/encoder" model.encoder.name=gpu-check-vitb \
    "${MODEL[@]}" "data.root=$WORK/data" "data.image_size=$SIZE" data.multi_scale=[] \
    train.epochs=2 train.amp=bf16 "train.batch_size=$BATCH" "train.num_workers=$WORKERS" train.log_interval=5 \
    "train.run_dir=$RUN" train.resume=

CKPT=$RUN/best.pth
[ -f "$CKPT" ] || CKPT=$RUN/last.pth
stage test "${LIMIT[test]}" "$PY" test.py --ckpt "$CKPT" --out "$WORK/test"

stage benchmark "${LIMIT[benchmark]}" "$PY" scripts/benchmark.py --device "$DEVICE" --size "$SIZE" \
    --encoder "$WORK/encoder" "${BENCH[@]}" --json "$OUT/benchmark.json" "${MODEL[@]}" train.amp=bf16

stage efficiency "${LIMIT[efficiency]}" "$PY" scripts/efficiency.py --device "$DEVICE" --cache "$WORK/efficiency" \
    --json "$OUT/efficiency.json" "${EFFICIENCY[@]}"

"$PY" scripts/gpu_check_report.py summary "$OUT"
echo "summary: $OUT/summary.md"
if cut -f2 "$STAGES" | grep -qv '^ok$\|^skipped'; then exit 1; fi  # the summary says which stage
