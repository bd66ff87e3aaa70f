#!/usr/bin/env bash
# One prepared check of the CUDA paths, for a machine with a CUDA GPU: under 9 minutes, no network.
#
#   bash benchmarks/gpu_check.sh                  # from the repository root; PYTHON=... to pick the interpreter
#
# Steps (each under its own time limit, 540 s in all; logs in $GPU_CHECK_DIR, default a temporary directory):
#   1. the test suite's CUDA tests: tests/test_cuda.py (predict engine fp16 vs fp32, pinned-memory
#      decode workers, 2 iterations of `zutis train` with AMP) and tests/models/test_device.py;
#   2. bench_predict: a ViT-B-16 ZUTIS model (random weights, the paper's decoder) in fp16, `predict`
#      end to end against the model-forward ceiling, batch 1 and 8, 100 scenes of 384 px;
#   3. bench_index: `zutis index` with ViT-B-16 (random weights, fp16 autocast) on 500 JPEGs of 640 x 480;
#   4. 50 iterations of `zutis train` with the official recipe (ViT-B-16, --pretrained none, batch 8,
#      384 px, 100 queries, 6 decoder layers) with AMP (fp16), on `zutis synth scenes` ground truth;
#   5. 100 steps of `zutis synth train-clip` (shapes-clip, bf16 autocast, pairs over named stuff and
#      varied looks, the patch-aligned term) fed by 12 data-generation workers: steps/s, and whether
#      generation keeps up with the GPU;
# then one table. Without CUDA, steps 2-5 are skipped (one line each) and replaced by a smoke run of
# the same commands at toy sizes on the CPU (shapes-clip or zutis-tiny), to check that they still run;
# step 1 reports its tests as skipped.
set -u -o pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # no network: every model here is built from random weights
WORK=${GPU_CHECK_DIR:-$(mktemp -d -t zutis-gpu-check-XXXXXX)}
mkdir -p "$WORK"
START=$(date +%s)
ROWS=()

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    CUDA=1
    DEVICE_TEXT=$("$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')")
else
    CUDA=0
    DEVICE_TEXT="no CUDA GPU (torch $("$PYTHON" -c 'import torch; print(torch.__version__)'))"
fi
echo "gpu_check: $DEVICE_TEXT; logs in $WORK"

# step NAME LIMIT_S COMMAND...: run with a time limit, log to $WORK/NAME.log, remember status and seconds
step() {
    local name=$1 limit=$2
    shift 2
    local begin=$(date +%s)
    echo "== $name (limit ${limit} s): $*"
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    local status=ok
    [ $rc -eq 124 ] && status="TIMEOUT"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED (exit $rc)"
    local seconds=$(( $(date +%s) - begin ))
    echo "   $status in ${seconds} s"
    [ "$status" = ok ] || tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'
    LAST_STATUS=$status
    LAST_SECONDS=$seconds
}

row() {  # row NAME STATUS SECONDS FIGURES
    ROWS+=("$(printf '%-26s | %-16s | %5s | %s' "$1" "$2" "$3" "$4")")
}

# ---- 1. CUDA tests -------------------------------------------------------------------------------
step tests 100 "$PYTHON" -m pytest -q -rs tests/test_cuda.py tests/models/test_device.py
row "tests (cuda, device)" "$LAST_STATUS" "$LAST_SECONDS" "$(tail -n 1 "$WORK/tests.log")"

# ---- 2. bench_predict: ViT-B-16 ZUTIS, fp16 vs its ceiling ----------------------------------------
VITB_ZUTIS=(--model ViT-B-16 --pretrained none --queries 100 --decoder-layers 6 --decoder-heads 8
            --decoder-ffn 2048 --mlp-hidden 256)
predict_figures() {
    local log=$WORK/$1.log
    local ceiling e2e
    ceiling=$(grep -oE '^\(a\) model-forward ceiling, batch [0-9]+: [0-9.]+ images/s' "$log" | sed -E 's/.*batch ([0-9]+): ([0-9.]+).*/b\1 \2/' | paste -sd, -)
    e2e=$(awk '/^  all +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ /{printf "%sb%s %s img/s = %s x ceiling", sep, $2, $4, $5; sep=", "}' "$log")
    echo "ceiling img/s ${ceiling:-?}; e2e ${e2e:-?}"
}
if [ $CUDA = 1 ]; then
    step bench_predict 150 "$PYTHON" benchmarks/bench_predict.py "${VITB_ZUTIS[@]}" --device cuda --precision fp16 \
        --images 100 --size 384 --batch-size 1,8 --repeats 1 --task all
    row "bench_predict ViT-B/16 fp16" "$LAST_STATUS" "$LAST_SECONDS" "$(predict_figures bench_predict)"
else
    echo "== bench_predict: SKIPPED, no CUDA GPU (ViT-B-16 fp16 needs one); CPU smoke run of the same command instead"
    step bench_predict_cpu_smoke 120 "$PYTHON" benchmarks/bench_predict.py --images 4 --size 64 --threads 1 \
        --batch-size 1,2 --repeats 1 --task all --clock cpu
    row "bench_predict (cpu smoke)" "$LAST_STATUS" "$LAST_SECONDS" "$(predict_figures bench_predict_cpu_smoke)"
fi

# ---- 3. bench_index: ViT-B-16 ---------------------------------------------------------------------
index_figures() {
    local log=$WORK/$1.log
    echo "$(grep -oE 'zutis index \(e2e\) +[0-9.]+ images/s' "$log" | sed -E 's/ +/ /g'); $(grep -oE 'ratio e2e / \(a\) +[0-9.]+' "$log" | sed -E 's/ +/ /g')"
}
if [ $CUDA = 1 ]; then
    step bench_index 90 "$PYTHON" benchmarks/bench_index.py --images 500 --model ViT-B-16 --precision auto \
        --device cuda --batch-size 64 --repeats 1 --dir "$WORK/index-jpegs"
    row "bench_index ViT-B/16" "$LAST_STATUS" "$LAST_SECONDS" "$(index_figures bench_index)"
else
    echo "== bench_index: SKIPPED, no CUDA GPU; CPU smoke run of the same command instead"
    step bench_index_cpu_smoke 120 "$PYTHON" benchmarks/bench_index.py --images 8 --model shapes-clip --precision fp32 \
        --device cpu --batch-size 4 --repeats 1 --workers 0 --dir "$WORK/index-jpegs"
    row "bench_index (cpu smoke)" "$LAST_STATUS" "$LAST_SECONDS" "$(index_figures bench_index_cpu_smoke)"
fi

# ---- 4. 50 iterations of the official recipe with AMP ---------------------------------------------
json_figures() {  # json_figures NAME KIND: the figures of the last JSON line of NAME's log (train or clip)
    "$PYTHON" - "$WORK/$1.log" "$2" <<'EOF'
import json, sys
lines = [line for line in open(sys.argv[1]).read().splitlines() if line.startswith("{")]
try:
    r = json.loads(lines[-1])
    if sys.argv[2] == "train":
        print(f"{r['iteration']} iterations, {r['iterations_per_second']:.2f} it/s, "
              f"final loss {r['final'].get('loss', float('nan')):.3f}")
    else:
        print(f"{r['steps']} steps, {r['steps'] / r['train_seconds']:.2f} steps/s, final loss {r['final_loss']:.3f}")
except Exception:  # noqa: BLE001 - the log shows what went wrong
    print("?")
EOF
}
if [ $CUDA = 1 ]; then
    step synth_scenes 40 "$PYTHON" -m zutiscli synth scenes -n 200 --size 384 -o "$WORK/scenes" --quiet
    step train 100 "$PYTHON" -m zutiscli train "$WORK/scenes" --model ViT-B-16 --pretrained none --batch-size 8 \
        --crop 384 --iterations 50 --precision fp16 --device cuda --crop-adapter-scenes 0 --log-every 10 \
        -o "$WORK/train" --json
    row "train ViT-B/16 AMP, 50 it" "$LAST_STATUS" "$LAST_SECONDS" "$(json_figures train train)"
else
    echo "== train: SKIPPED, no CUDA GPU (AMP fp16 needs one); CPU smoke run of the same command instead"
    step synth_scenes 60 "$PYTHON" -m zutiscli synth scenes -n 8 --size 64 -o "$WORK/scenes" --quiet
    step train_cpu_smoke 120 "$PYTHON" -m zutiscli train "$WORK/scenes" --model shapes-clip --pretrained none \
        --batch-size 2 --crop 64 --iterations 2 --num-queries 4 --decoder-layers 1 --precision fp32 --device cpu \
        --workers 0 --crop-adapter-scenes 0 -o "$WORK/train" --json
    row "train (cpu smoke)" "$LAST_STATUS" "$LAST_SECONDS" "$(json_figures train_cpu_smoke train)"
fi

# ---- 5. train-clip on the GPU ---------------------------------------------------------------------
if [ $CUDA = 1 ]; then
    step train_clip 60 "$PYTHON" -m zutiscli synth train-clip --device cuda --steps 100 --stuff 0.3 --varied 0.4 \
        --dense 0.5 --workers 12 --eval-pool 0 --checkpoint-every 0 -o "$WORK/clip" --json
    row "train-clip bf16, 100 steps" "$LAST_STATUS" "$LAST_SECONDS" "$(json_figures train_clip clip)"
else
    echo "== train-clip: SKIPPED, no CUDA GPU; CPU smoke run of the same command instead"
    step train_clip_cpu_smoke 120 "$PYTHON" -m zutiscli synth train-clip --device cpu --steps 2 --batch-size 8 \
        --stuff 0.3 --varied 0.4 --dense 0.5 --workers 0 --eval-pool 0 --checkpoint-every 0 -o "$WORK/clip" --json
    row "train-clip (cpu smoke)" "$LAST_STATUS" "$LAST_SECONDS" "$(json_figures train_clip_cpu_smoke clip)"
fi

# ---- the table ------------------------------------------------------------------------------------
echo
echo "gpu_check on $DEVICE_TEXT, $(( $(date +%s) - START )) s in all; logs in $WORK"
printf '%-26s | %-16s | %5s | %s\n' "step" "status" "s" "figures"
printf '%s\n' "---------------------------+------------------+-------+--------------------------------------------"
printf '%s\n' "${ROWS[@]}"
[ $CUDA = 1 ] || echo "(no CUDA GPU: the CUDA tests were skipped and steps 2-5 ran as CPU smoke runs at toy sizes)"
