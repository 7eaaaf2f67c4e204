#!/usr/bin/env bash
# SQuAD-QG with the recommended CPU-budget recipe: fine-tune all-MiniLM-L6-v2 (pseudo-masked, with the copy
# mechanism), decode one question per distinct dev sentence, score against all of that sentence's questions, next to
# trivial baselines; with TEST=1 the same on the test split (score it once per finished recipe, never to choose).
#
#   bash experiments/squad_qg_recipe.sh DATA_DIR WORK_DIR      # DATA_DIR holds squad_qg_du/{train,dev}.jsonl
#
# Writes WORK_DIR/dev.grouped.jsonl (one line per distinct dev sentence, all its questions as refs),
# WORK_DIR/model/ (checkpoints, train_log.jsonl, eval_log.jsonl on a 340-sentence dev sample, training_curves.png),
# WORK_DIR/dev.pred.txt (one line per distinct sentence, in order of first appearance) and WORK_DIR/scores.json
# (with TEST=1 also WORK_DIR/test.grouped.jsonl, test.pred.txt, test.scores.json)
# (grouped-reference BLEU-4 / METEOR / ROUGE-L / sacreBLEU, `distinct` and `source_overlap` as fractions,
# `train_seconds`, and the same figures for the baselines). Re-run the same command after an interruption:
# training resumes exactly from its last checkpoint, decoding from its last finished chunk.
# Overridable: PYTHON, MODEL_DIR (default: the pip-installed all-MiniLM-L6-v2), STEPS, MINUTES (58: the training's
# wall-clock budget, --max_train_minutes: on a machine too slow for STEPS in that time the schedule ends earlier;
# 0: off), SEED, PRECISION,
# DROPOUT_FROM_STEP (late dropout: none before this step; 0 turns it off), DATASET (default squad_qg_du, Du et al.'s
# full three-way split; squad_qg is the older 11,877-pair training file, which IS squad_qg_du's test split),
# COPY (0: without the copy mechanism), EXTRA_TRAIN_FLAGS (appended to the training command), EVAL_SAMPLE (0: no
# dev-sample evaluation during training), EVAL_STEPS (700: its period), SCORE (0: stop after decoding, e.g. where
# nltk is not installed), TEST.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
STEPS="${STEPS:-3600}"
MINUTES="${MINUTES:-58}"
SEED="${SEED:-1}"
DROPOUT_FROM_STEP="${DROPOUT_FROM_STEP:-800}"
DATASET="${DATASET:-squad_qg_du}"
EXTRA_TRAIN_FLAGS="${EXTRA_TRAIN_FLAGS:-}"
EVAL_SAMPLE="${EVAL_SAMPLE:-1}"
SCORE="${SCORE:-1}"
COPY="${COPY:-1}"
EVAL_STEPS="${EVAL_STEPS:-700}"
TEST="${TEST:-0}"
if [ "$COPY" != 0 ]; then EXTRA_TRAIN_FLAGS="--copy_mechanism $EXTRA_TRAIN_FLAGS"; fi
for f in train dev; do
  [ -f "$DATA/$DATASET/$f.jsonl" ] || { echo "error: $DATA/$DATASET/$f.jsonl not found" >&2; exit 2; }
done
mkdir -p "$WORK"

"$PYTHON" experiments/squad_qg.py group "$DATA/$DATASET/dev.jsonl" "$WORK/dev.grouped.jsonl" \
  --every 20 --sample "$WORK/dev.sample.jsonl"

# The recipe (README, "Recommended settings"): the fresh MLM head starts as the identity, a high peak learning
# rate with warmup and linear decay, token-budget batches (little padding), bf16 autocast where native, sources cut at 96 word
# pieces (98 % whole), late dropout (none for the first 800 steps), outputs in the references' Penn-Treebank
# tokenisation.
qg_eval_flags "$WORK/dev.sample.jsonl" "$EVAL_STEPS"
# A finished run resumes as a no-op (a few seconds of start-up), so a re-run after an interruption goes on from here.
# shellcheck disable=SC2086  # EXTRA_TRAIN_FLAGS is a list of flags
"$PYTHON" run_seq2seq.py \
  --model_type bert --model_name_or_path "$MODEL_DIR" --fresh_head_init identity \
  --train_file "$DATA/$DATASET/train.jsonl" --output_dir "$WORK/model" --fine_tune pseudo_masked \
  --max_source_seq_length 96 --max_target_seq_length 32 \
  --max_tokens_per_batch 2400 --learning_rate 5e-4 --num_warmup_steps 200 \
  --num_training_steps "$STEPS" --precision "$PRECISION" --seed "$SEED" --dropout_from_step "$DROPOUT_FROM_STEP" \
  --max_train_minutes "$MINUTES" \
  --logging_steps 25 --save_steps 200 --save_total_limit 2 "${EVAL_FLAGS[@]}" $EXTRA_TRAIN_FLAGS

# The last checkpoint: ckpt-$STEPS, or an earlier one where the time budget ended the run.
FINAL="$(last_checkpoint "$WORK/model")"
SPLITS=(dev)
if [ "$TEST" != 0 ]; then
  [ -f "$DATA/$DATASET/test.jsonl" ] || { echo "error: $DATA/$DATASET/test.jsonl not found" >&2; exit 2; }
  "$PYTHON" experiments/squad_qg.py group "$DATA/$DATASET/test.jsonl" "$WORK/test.grouped.jsonl"
  SPLITS+=(test)
fi
for split in "${SPLITS[@]}"; do
  "$PYTHON" decode_seq2seq.py \
    --model_path "$FINAL" --input_file "$WORK/$split.grouped.jsonl" \
    --output_file "$WORK/$split.pred.txt" \
    --precision "$PRECISION" --batch_size 64 --beam_size 5 --length_penalty 2.0 --min_len 6 --max_tgt_length 32 \
    --forbid_duplicate_ngrams --ngram_size 3 --detokenize ptb --resume
done

[ "$SCORE" != 0 ] || exit 0
"$PYTHON" experiments/squad_qg.py score "$WORK/dev.grouped.jsonl" "$WORK/dev.pred.txt" \
  --json "$WORK/scores.json" --train_log "$WORK/model/train_log.jsonl"
if [ "$TEST" != 0 ]; then
  "$PYTHON" experiments/squad_qg.py score "$WORK/test.grouped.jsonl" "$WORK/test.pred.txt" \
    --json "$WORK/test.scores.json" --train_log "$WORK/model/train_log.jsonl"
fi
