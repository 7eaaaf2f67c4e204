#!/usr/bin/env bash
# Answer-aware SQuAD-QG (sentence + answer -> question) with the CPU-budget recipe: fine-tune all-MiniLM-L6-v2
# (pseudo-masked, copy mechanism, the answer shown as ANSWER_ENCODING), decode one question per distinct (sentence,
# answer) of dev, score against all of that pair's questions next to trivial baselines; with TEST=1 the same on
# test (score it once per finished recipe, never to choose).
#
#   bash experiments/squad_qg_answer_recipe.sh DATA_DIR WORK_DIR   # DATA_DIR holds squad_qg_du_answer/
#
# Writes WORK_DIR/dev.grouped.jsonl (one line per distinct dev pair, all its questions as refs), WORK_DIR/model/
# (checkpoints, train_log.jsonl, eval_log.jsonl on a dev sample, training_curves.png), WORK_DIR/dev.pred.txt and
# WORK_DIR/scores.json (with TEST=1 also test.grouped.jsonl, test.pred.txt, test.scores.json). Re-run the same command
# after an interruption: training resumes exactly from its last checkpoint, decoding from its last finished chunk.
# Overridable: PYTHON, MODEL_DIR (default: the pip-installed all-MiniLM-L6-v2), ANSWER_ENCODING (span+segment; or
# segment, span), STEPS, MINUTES (58: the training's wall-clock budget, --max_train_minutes; 0: off), LR, SEED,
# PRECISION, MAX_SOURCE (96), PARAGRAPH (1: the whole paragraph as the source, the answer pointed at inside it),
# COPY (0: without the copy mechanism), EXTRA_TRAIN_FLAGS, EVAL_SAMPLE (0: no dev-sample evaluation during training),
# EVAL_STEPS (1200), EVAL_EVERY (20: the dev sample is every 20th pair), DECODE_FLAGS (the search), SPLITS_DECODED
# (dev; "" for none), AGNOSTIC (an answer-agnostic run's
# directory with test.pred.txt(.gz), a baseline on test), SCORE (0: stop after decoding), COCO (1: also the papers'
# METEOR 1.5 / ROUGE-L, needs pip install -e ".[papers]" and Java), TEST.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
ANSWER_ENCODING="${ANSWER_ENCODING:-span+segment}"
STEPS="${STEPS:-5000}"  # an upper bound: --max_train_minutes plans the steps that fit (3,590 in the recorded run)
MINUTES="${MINUTES:-58}"
LR="${LR:-5e-4}"
SEED="${SEED:-1}"
MAX_SOURCE="${MAX_SOURCE:-96}"
PARAGRAPH="${PARAGRAPH:-0}"
DROPOUT_FROM_STEP="${DROPOUT_FROM_STEP:-800}"
EXTRA_TRAIN_FLAGS="${EXTRA_TRAIN_FLAGS:-}"
EVAL_SAMPLE="${EVAL_SAMPLE:-1}"
EVAL_STEPS="${EVAL_STEPS:-1200}"
EVAL_EVERY="${EVAL_EVERY:-20}"  # the dev sample: every 20th pair (497 pairs)
COPY="${COPY:-1}"
SCORE="${SCORE:-1}"
TEST="${TEST:-0}"
SPLITS_DECODED="${SPLITS_DECODED-dev}"  # "" (set but empty): decode no split
# the search chosen on dev (experiments/results/squad_qg_answer: beam 10, length penalty 2.5, min length 8 beat the
# answer-agnostic recipe's beam 5 / 2.0 / 6 by 0.9 BLEU-4 on every 5th dev pair and 0.4 on all of dev)
DECODE_FLAGS="${DECODE_FLAGS:---beam_size 10 --length_penalty 2.5 --min_len 8 --forbid_duplicate_ngrams --ngram_size 3}"
AGNOSTIC="${AGNOSTIC:-}"
if [ "$COPY" != 0 ]; then EXTRA_TRAIN_FLAGS="--copy_mechanism $EXTRA_TRAIN_FLAGS"; fi
SET="$DATA/squad_qg_du_answer"
for f in train dev; do
  [ -f "$SET/$f.jsonl" ] || { echo "error: $SET/$f.jsonl not found" >&2; exit 2; }
done
mkdir -p "$WORK"

# Sources: the sentence (default) or, with PARAGRAPH=1, its paragraph with the answer pointed at inside it.
group() {  # split, output, [extra flags]
  local split="$1" out="$2"
  shift 2
  local flags=()
  if [ "$PARAGRAPH" != 0 ]; then flags=(--paragraphs "$SET/$split.paragraphs.jsonl"); fi
  "$PYTHON" experiments/squad_qg_answer.py group "$SET/$split.jsonl" "$out" "${flags[@]}" "$@"
}
TRAIN_FILE="$SET/train.jsonl"
if [ "$PARAGRAPH" != 0 ]; then
  TRAIN_FILE="$WORK/train.paragraph.jsonl"
  [ -f "$TRAIN_FILE" ] || "$PYTHON" experiments/squad_qg_answer.py paragraphs "$SET/train.jsonl" \
    "$SET/train.paragraphs.jsonl" "$TRAIN_FILE"
fi
group dev "$WORK/dev.grouped.jsonl" --every "$EVAL_EVERY" --sample "$WORK/dev.sample.jsonl"

qg_eval_flags "$WORK/dev.sample.jsonl" "$EVAL_STEPS"
# The answer-agnostic recipe's settings (squad_qg_recipe.sh), the answer shown as ANSWER_ENCODING.
# shellcheck disable=SC2086  # EXTRA_TRAIN_FLAGS is a list of flags
"$PYTHON" run_seq2seq.py \
  --model_type bert --model_name_or_path "$MODEL_DIR" --fresh_head_init identity \
  --train_file "$TRAIN_FILE" --output_dir "$WORK/model" --fine_tune pseudo_masked \
  --answer_encoding "$ANSWER_ENCODING" --max_source_seq_length "$MAX_SOURCE" --max_target_seq_length 32 \
  --max_tokens_per_batch 2400 --learning_rate "$LR" --num_warmup_steps 200 \
  --num_training_steps "$STEPS" --precision "$PRECISION" --seed "$SEED" --dropout_from_step "$DROPOUT_FROM_STEP" \
  --max_train_minutes "$MINUTES" \
  --logging_steps 25 --save_steps 200 --save_total_limit 2 "${EVAL_FLAGS[@]}" $EXTRA_TRAIN_FLAGS

FINAL="$(last_checkpoint "$WORK/model")"
read -r -a SPLITS <<< "$SPLITS_DECODED"
if [ "$TEST" != 0 ]; then
  [ -f "$SET/test.jsonl" ] || { echo "error: $SET/test.jsonl not found" >&2; exit 2; }
  SPLITS+=(test)
fi
for split in "${SPLITS[@]}"; do
  [ -f "$WORK/$split.grouped.jsonl" ] || group "$split" "$WORK/$split.grouped.jsonl"
  # shellcheck disable=SC2086  # DECODE_FLAGS is a list of flags
  "$PYTHON" decode_seq2seq.py \
    --model_path "$FINAL" --input_file "$WORK/$split.grouped.jsonl" --output_file "$WORK/$split.pred.txt" \
    --precision "$PRECISION" --batch_size 64 --max_tgt_length 32 $DECODE_FLAGS --detokenize ptb --resume
done

[ "$SCORE" != 0 ] || exit 0
for split in "${SPLITS[@]}"; do
  SCORE_FLAGS=()
  if [ "${COCO:-0}" != 0 ]; then SCORE_FLAGS=(--coco); fi
  if [ -n "$AGNOSTIC" ] && [ "$split" = test ]; then
    "$PYTHON" experiments/squad_qg.py group "$DATA/squad_qg_du/test.jsonl" "$WORK/test.by_sentence.jsonl"
    if [ -f "$AGNOSTIC/test.pred.txt" ]; then cp "$AGNOSTIC/test.pred.txt" "$WORK/agnostic.test.pred.txt"
    else gunzip -c "$AGNOSTIC/test.pred.txt.gz" > "$WORK/agnostic.test.pred.txt"; fi
    SCORE_FLAGS+=(--agnostic "$WORK/test.by_sentence.jsonl" "$WORK/agnostic.test.pred.txt")
  fi
  "$PYTHON" experiments/squad_qg_answer.py score "$WORK/$split.grouped.jsonl" "$WORK/$split.pred.txt" \
    --json "$WORK/$split.scores.json" --train_log "$WORK/model/train_log.jsonl" "${SCORE_FLAGS[@]}"
done
