#!/usr/bin/env bash
# The prepared GPU check: GPU tests, training/signal benchmarks and the 32-model CIFAR-10
# study in one unattended command of at most 8 minutes on one modern GPU, with every
# stage under its own time limit, so a hang in one still returns the others' results.
#
# Usage:
#   scripts/gpu_check.sh [--smoke] [--stages LIST]
#
#   --smoke        tiny sizes on CPU (synthetic CIFAR-shaped data, few models, 1 epoch,
#                  small benchmarks): checks the whole script works (about 30 s of CPU time)
#   --stages LIST  comma-separated subset of: tests,data,study,bench_cifar_cnn,bench_resnet18
#                  (default: all; the env stage always runs first)
#
# Stages, in order (default limits in seconds on the GPU; GPU_CHECK_LIMIT_<STAGE>=N changes one):
#   env (60)              unpack carried wheels, check every import, record versions and the GPU
#   tests (120)           pytest -m gpu on the test files that have GPU tests (tracebacks in tests.log)
#   data (90)             decode the CIFAR-10 JPEG container into an .npz (smoke: a synthetic one)
#   study (240)           experiment=cifar10_fast (32 models, targets 0-3, identity + flip) on it,
#                         timing training, signals and attacks
#   bench_cifar_cnn (90)  scripts/bench.py: naive loop vs train_model vs train_models (vmap, loop),
#   bench_resnet18 (120)  naive vs project signal collection; img/s, ratios, TFLOP/s
# The whole run stops within GPU_CHECK_BUDGET_S (default 465 s): a stage gets at most the
# time left, and one with too little left is skipped.
#
# Outputs, at most 8 files directly in $OUT (default outputs/gpu_check/<UTC time>):
#   summary.md, summary.json   the table printed at the end (rewritten after every stage)
#   setup.log, tests.log, study.log, bench.log   each stage's output
#   artifacts.tar.gz           env.json, stages.tsv, tests.xml, bench_*.json, the study's
#                              results.json, timings, ROC plot and TensorBoard events
# Scratch (decoded data, model store) goes to $GPU_CHECK_WORK (default
# outputs/gpu_check_work/<UTC time>); a rerun with the same GPU_CHECK_WORK reuses the
# models already trained (the summary says how many). The exit status is 0 when every
# stage succeeded.
#
# Running it on a GPU machine without a virtualenv or network:
#   1. Here, once per checkout:  scripts/gpu_check_prepare.sh [path/to/cifar10_jpeg.npz]
#      downloads the wheels of the dependencies a bare Python 3.12 with torch, torchvision,
#      tensorboard, scikit-learn and matplotlib lacks (hydra-core, omegaconf,
#      antlr4-python3-runtime, pyyaml, tqdm, pytest and theirs, about 3 MB) into .wheels/ and
#      copies the CIFAR-10 JPEG container (18 MB) to .data/cifar10_jpeg.npz; both folders
#      are git-ignored.
#   2. There, from the checkout root, with .wheels and .data carried along:
#        OUT=/some/folder scripts/gpu_check.sh
#      The env stage unpacks WHEELS (default .wheels) into the work folder and puts it on
#      PYTHONPATH after the checkout itself (PYTHONPATH=.: the package is imported from the
#      checkout, nothing is installed).
# Variables: OUT, GPU_CHECK_WORK, PYTHON (default .venv/bin/python if present, else python3),
#   WHEELS (default .wheels), CIFAR10_JPEG (default .data/cifar10_jpeg.npz), GPU_CHECK_BUDGET_S,
#   GPU_CHECK_LIMIT_<STAGE> (e.g. GPU_CHECK_LIMIT_STUDY=300), GPU_CHECK_STUDY_ARGS (extra
#   Hydra overrides for the study, e.g. "train.epochs=10").
set -uo pipefail

CALLER_DIR=$PWD
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD

SMOKE=0
ONLY=""
while (($#)); do
    case $1 in
        --smoke) SMOKE=1 ;;
        --stages) ONLY=${2:?--stages needs a comma-separated list}; shift ;;
        --stages=*) ONLY=${1#--stages=} ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
ALL_STAGES="tests data study bench_cifar_cnn bench_resnet18"
for s in ${ONLY//,/ }; do
    case " $ALL_STAGES " in *" $s "*) ;; *) echo "error: unknown stage '$s' in --stages; stages: ${ALL_STAGES// /,}" >&2; exit 2 ;; esac
done

absolute() { case $1 in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=$(absolute "${OUT:-$REPO/outputs/gpu_check/$STAMP}")
WORK=$(absolute "${GPU_CHECK_WORK:-$REPO/outputs/gpu_check_work/$STAMP}")
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: Python interpreter '$PYTHON' not found: set PYTHON to one with torch installed" >&2
    exit 2
fi
WHEELS=$(absolute "${WHEELS:-$REPO/.wheels}")
CIFAR10_JPEG=$(absolute "${CIFAR10_JPEG:-$REPO/.data/cifar10_jpeg.npz}")
BUDGET=${GPU_CHECK_BUDGET_S:-465}
for var in GPU_CHECK_BUDGET_S ${!GPU_CHECK_LIMIT_*}; do
    if [[ -n ${!var:-} && ! ${!var} =~ ^[0-9]+$ ]]; then
        echo "error: $var=${!var} is not a whole number of seconds" >&2
        exit 2
    fi
done
if [[ -d $OUT && -n $(ls -A "$OUT") ]]; then
    echo "error: output folder $OUT is not empty: point OUT at a new or empty folder" >&2
    exit 2
fi
RESERVE=25  # seconds kept for a killed stage's grace period, the summary and the archive
KILL_AFTER=10
DEADLINE=$((SECONDS + BUDGET))

mkdir -p "$OUT" "$WORK" || exit 1
SITE=$WORK/site
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
: >"$WORK/stages.tsv"
git -C "$REPO" rev-parse HEAD >"$WORK/commit.txt" 2>/dev/null || echo "${GPU_CHECK_COMMIT:-unknown}" >"$WORK/commit.txt"

if ((SMOKE)); then
    MODE_ARGS=(--smoke)
    DEVICE=cpu
    declare -A LIMIT=([env]=120 [tests]=120 [data]=60 [study]=180 [bench_cifar_cnn]=120 [bench_resnet18]=120)
else
    MODE_ARGS=()
    DEVICE=cuda
    declare -A LIMIT=([env]=60 [tests]=120 [data]=90 [study]=240 [bench_cifar_cnn]=90 [bench_resnet18]=120)
fi

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

summarize() {
    "$PYTHON" "$REPO/scripts/gpu_check_summary.py" --work "$WORK" --out "$OUT" ${MODE_ARGS[@]+"${MODE_ARGS[@]}"} "$@"
}

wanted() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/stages.tsv"; }

# run_stage NAME LOG COMMAND...: run COMMAND under the stage's time limit, output appended to LOG
run_stage() {
    local name=$1 log=$OUT/$2
    shift 2
    local var=GPU_CHECK_LIMIT_${name^^}
    local limit=${!var:-${LIMIT[$name]}}
    local left=$((DEADLINE - SECONDS - RESERVE))
    if ((left < 10)); then
        say "$name: skipped, the time budget is spent"
        record "$name" "skipped (time budget spent)" 0 "$limit"
        summarize --quiet
        return 1
    fi
    ((limit > left)) && limit=$left
    say "$name: started (limit ${limit}s, output in $(basename "$log"))"
    echo "===== $name: $* (limit ${limit}s, $(date -u +%FT%TZ))" >>"$log"
    local start rc seconds
    start=$(date +%s.%N)
    timeout --kill-after=$KILL_AFTER "$limit" "$@" >>"$log" 2>&1 </dev/null
    rc=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    record "$name" "$rc" "$seconds" "$limit"
    case $rc in
        0) say "$name: ok in ${seconds}s" ;;
        124 | 137) say "$name: TIMEOUT after ${seconds}s (limit ${limit}s), see $(basename "$log")" ;;
        *) say "$name: FAILED with exit status $rc after ${seconds}s, see $(basename "$log")" ;;
    esac
    summarize --quiet
    return $rc
}

skip() { wanted "$1" && record "$1" "skipped ($2)" 0 "${LIMIT[$1]}"; }

finish() {
    local files=() f
    for f in env.json stages.tsv commit.txt tests.xml bench_cifar_cnn.json bench_resnet18.json study_timings.json \
        study/results.json study/roc.png study/tensorboard; do
        [[ -e $WORK/$f ]] && files+=("$f")
    done
    if ((${#files[@]})); then
        tar -czf "$OUT/artifacts.tar.gz" -C "$WORK" "${files[@]}"
        if (($(stat -c %s "$OUT/artifacts.tar.gz") > 15000000)); then  # the way back takes files up to 16 MB
            files=("${files[@]/study\/tensorboard/}")
            tar -czf "$OUT/artifacts.tar.gz" -C "$WORK" ${files[@]}
        fi
    fi
    for f in "$OUT"/*.log; do  # keep the end of an oversized log, where the errors are
        [[ -f $f ]] && (($(stat -c %s "$f") > 15000000)) && tail -c 15000000 "$f" >"$f.tmp" && mv "$f.tmp" "$f"
    done
    summarize
    say "outputs in $OUT"
    awk -F'\t' '$2 != "0" { bad = 1 } END { exit bad }' "$WORK/stages.tsv"
}

say "mode $( ((SMOKE)) && echo smoke || echo gpu), python $PYTHON, outputs $OUT, work $WORK, budget ${BUDGET}s"

# env: without the imports nothing else can run
ENV_ARGS=(--out "$WORK/env.json")
[[ -d $WHEELS ]] && ENV_ARGS+=(--wheels "$WHEELS" --site "$SITE")
((SMOKE)) || ENV_ARGS+=(--require-cuda)
if ! run_stage env setup.log "$PYTHON" scripts/gpu_check_env.py "${ENV_ARGS[@]}"; then
    for s in $ALL_STAGES; do skip "$s" "env failed"; done
    finish
    exit 1
fi

if wanted tests; then
    mapfile -t GPU_TEST_FILES < <(grep -l "mark.gpu" tests/test_*.py)
    run_stage tests tests.log "$PYTHON" -m pytest -m gpu -p no:cacheprovider -ra -v --tb=long --durations=15 \
        --junitxml="$WORK/tests.xml" "${GPU_TEST_FILES[@]}"
fi

DATA=$WORK/cifar10.npz
if wanted data || wanted study; then
    if ((SMOKE)); then
        run_stage data setup.log bash -c '"$1" scripts/decode_cifar10_jpeg.py --synthetic 256,64 "$2" &&
            "$1" scripts/decode_cifar10_jpeg.py "$2" "$3"' _ "$PYTHON" "$WORK/cifar10_jpeg_synthetic.npz" "$DATA"
    elif [[ ! -f $CIFAR10_JPEG ]]; then
        echo "error: CIFAR-10 JPEG container $CIFAR10_JPEG not found: set CIFAR10_JPEG, or run scripts/gpu_check_prepare.sh" \
            "and carry .data/" | tee -a "$OUT/setup.log" >&2
        record data 1 0 "${LIMIT[data]}"
    else
        run_stage data setup.log "$PYTHON" scripts/decode_cifar10_jpeg.py "$CIFAR10_JPEG" "$DATA"
    fi
fi

if wanted study; then
    if [[ -f $DATA ]]; then
        STUDY=(experiment=cifar10_fast dataset=npz "dataset.path=$DATA" "store_dir=$WORK/store" "device=$DEVICE"
            progress=false)
        if ((SMOKE)); then
            STUDY+=("model.widths=[8,16,16]" num_models=4 "target_ids=[0]" train.epochs=1 train.warmup_epochs=0
                train.batch_size=64 bootstrap=0 sanity_check=false num_threads=1)
        fi
        read -r -a EXTRA <<<"${GPU_CHECK_STUDY_ARGS:-}"
        run_stage study study.log "$PYTHON" scripts/gpu_check_study.py --run-dir "$WORK/study" \
            --timings "$WORK/study_timings.json" "${STUDY[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
    else
        skip study "no decoded data"
    fi
fi

for model in cifar_cnn resnet18; do
    wanted "bench_$model" || continue
    if ((SMOKE)); then
        [[ $model == cifar_cnn ]] && model_args='{"widths": [8, 16, 16]}' || model_args='{"width": 4}'
        BENCH=(--model-args "$model_args" --num-train 64 --num-test 32 --epochs 1 --batch-size 32 --num-models 2
            --repeats 1 --num-workers 0 --threads 1)
    elif [[ $model == cifar_cnn ]]; then
        BENCH=(--num-train 10000 --num-test 2000 --epochs 2 --batch-size 512 --num-models 8 --repeats 2)
    else
        BENCH=(--num-train 10000 --num-test 2000 --epochs 2 --batch-size 128 --num-models 4 --repeats 2)
    fi
    run_stage "bench_$model" bench.log "$PYTHON" scripts/bench.py --model "$model" --dataset synthetic-cifar \
        --device "$DEVICE" --strategies loop,vmap --out "$WORK/bench_$model.json" "${BENCH[@]}"
done

finish
