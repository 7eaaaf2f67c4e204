#!/usr/bin/env bash
# Seconds per optimizer step of the SQuAD-QG recipe's training command at two commits, measured side by side on one
# machine: the commits take turns (OLD NEW OLD NEW ...), each turn a fresh run of STEPS steps, so that the machine's
# drift hits both alike. A step's time is read from train_log.jsonl (the logging windows' `seconds`), leaving out
# the first window (start-up, warm-up of the kernels). Same flags at both commits: the recipe's (copy mechanism,
# 2,400-token batches, bf16 where native, no dropout before step 800) less --max_train_minutes, which older commits
# lack; the evaluation is left out (it is not a step).
#
#   bash benchmarks/recipe_step_speed.sh OLD_COMMIT DATA_DIR WORK_DIR     # DATA_DIR holds squad_qg_du/train.jsonl
#
# Overridable: NEW_COMMIT (HEAD), STEPS (75), ROUNDS (2), PYTHON, OLD_COPY and NEW_COPY (0: that commit without the
# copy mechanism; OLD_COPY=0 is issue 23's recipe as it was measured). Worktrees go to WORK_DIR/{old,new}; tokenised
# examples are cached per commit, so only the first turn of each pays for tokenising. Relative paths are taken from
# the repository root, as in the recipes (experiments/recipe_common.sh).
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: bash $0 OLD_COMMIT DATA_DIR WORK_DIR" >&2
  exit 2
fi
OLD="$1"
# DATA, WORK, PYTHON, MODEL_DIR and PRECISION as the recipes set them (and the working directory: the repository root)
source "$(dirname "${BASH_SOURCE[0]}")/../experiments/recipe_common.sh" "$2" "$3"
DATA="$(realpath "$DATA")"  # absolute: the runs start in the worktrees
WORK="$(realpath -m "$WORK")"
REPO="$(pwd)"
NEW_COMMIT="${NEW_COMMIT:-HEAD}"
STEPS="${STEPS:-75}"
ROUNDS="${ROUNDS:-2}"
OLD_COPY="${OLD_COPY:-1}"
NEW_COPY="${NEW_COPY:-1}"
TRAIN="$DATA/squad_qg_du/train.jsonl"
[ -f "$TRAIN" ] || { echo "error: $TRAIN not found" >&2; exit 2; }
mkdir -p "$WORK/runs"
for side in old new; do
  commit="$OLD"
  if [ "$side" = new ]; then commit="$NEW_COMMIT"; fi
  if [ ! -d "$WORK/$side" ]; then git -C "$REPO" worktree add --detach "$WORK/$side" "$commit" > /dev/null; fi
done

one_turn() {  # one fresh run at one side; prints its per-step seconds, first logging window left out
  local side="$1" round="$2"
  local out="$WORK/runs/$side-$round" copy=(--copy_mechanism)
  if { [ "$side" = old ] && [ "$OLD_COPY" = 0 ]; } || { [ "$side" = new ] && [ "$NEW_COPY" = 0 ]; }; then copy=(); fi
  rm -rf "$out"
  (cd "$WORK/$side" && "$PYTHON" run_seq2seq.py --model_type bert --model_name_or_path "$MODEL_DIR" \
    --fresh_head_init identity --train_file "$TRAIN" --output_dir "$out" --features_cache_dir "$WORK/cache-$side" \
    --fine_tune pseudo_masked --max_source_seq_length 96 --max_target_seq_length 32 --max_tokens_per_batch 2400 \
    --learning_rate 5e-4 --num_warmup_steps 200 --num_training_steps "$STEPS" --precision "$PRECISION" --seed 1 \
    --dropout_from_step 800 --logging_steps 25 --save_steps 100000 "${copy[@]}") > "$out.log" 2>&1 \
    || { echo "error: the $side run failed, see $out.log" >&2; exit 1; }
  "$PYTHON" -c 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
timed = [r for r in rows if "seconds" in r][1:]
total = sum(r["seconds"] for r in timed)
print(f"{total / (25 * len(timed)):.3f}")' "$out/train_log.jsonl"
}

declare -A per_step=([old]="" [new]="")
for round in $(seq 1 "$ROUNDS"); do
  for side in old new; do
    seconds="$(one_turn "$side" "$round")"
    per_step[$side]+="$seconds "
    echo "round $round $side ($(git -C "$WORK/$side" rev-parse --short HEAD)): $seconds s per step"
  done
done
"$PYTHON" -c 'import statistics, sys
old, new = (statistics.median(float(x) for x in arg.split()) for arg in sys.argv[1:3])
print(f"median s per step: old {old:.3f}, new {new:.3f}; steps per hour new / old: {old / new:.2f}x")' \
  "${per_step[old]}" "${per_step[new]}"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
