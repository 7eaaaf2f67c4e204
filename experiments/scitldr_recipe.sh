#!/usr/bin/env bash
# SciTLDR (abstract -> one-sentence TLDR) at a 1,000-step CPU budget: fine-tune all-MiniLM-L6-v2 (pseudo-masked; with
# the copy mechanism unless COPY=0), decode the test abstracts with the search chosen on the dev abstracts ("e" in
# experiments/results/scitldr/: beam 5, length penalty 1.0, min 15 tokens, no repeated bigram; and, chosen on dev in
# experiments/results/scitldr_more_steps/, only words of the abstract), score ROUGE against all of each abstract's
# TLDRs, and print the extractive baselines scored the same way.
#
#   bash experiments/scitldr_recipe.sh DATA_DIR WORK_DIR      # DATA_DIR holds scitldr/{train,test}.jsonl
#
# The training settings are those of the earlier SciTLDR comparison (experiments/results/scitldr/README.md) with
# 1,000 steps instead of 600 (experiments/results/scitldr_more_steps/): <= 4,096-token batches, lr 3e-4 with 7 %
# warmup, dropout 0, label smoothing 0.1, sources cut at 256 word pieces, targets at 48, seed 1. Writes
# WORK_DIR/model/, WORK_DIR/test.pred.txt, WORK_DIR/test.scores.json.
# Re-run after an interruption: training resumes exactly, decoding from its last chunk.
# Overridable: PYTHON, MODEL_DIR (a checkpoint, or a training run's directory for its last checkpoint: the QG recipe's
# WORK_DIR/model starts from the question generator, experiments/results/scitldr_qg_init/), PRECISION, COPY (0:
# without the copy mechanism), SEED, STEPS (1000), MIN_LEN (15) and LENGTH_PENALTY (1.0) of the search, SEARCH_FLAGS
# (appended to the decoding command; default --source_words_only, "" for a free search), SPLITS ("test"; "dev test"
# decodes and scores the dev abstracts too, to choose on), GUIDE (1: train and decode on contribution-first sources,
# experiments/scitldr_guided.py, written to WORK_DIR/sources/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
COPY="${COPY:-1}"
SEED="${SEED:-1}"
STEPS="${STEPS:-1000}"
SEARCH_FLAGS="${SEARCH_FLAGS---source_words_only}"
SPLITS="${SPLITS:-test}"
GUIDE="${GUIDE:-0}"
MIN_LEN="${MIN_LEN:-15}"
LENGTH_PENALTY="${LENGTH_PENALTY:-1.0}"
for f in train test; do
  [ -f "$DATA/scitldr/$f.jsonl" ] || { echo "error: $DATA/scitldr/$f.jsonl not found" >&2; exit 2; }
done
COPY_FLAG=()
if [ "$COPY" != 0 ]; then COPY_FLAG=(--copy_mechanism); fi
mkdir -p "$WORK"
SOURCES="$DATA/scitldr"
if [ "$GUIDE" != 0 ]; then
  SOURCES="$WORK/sources"
  mkdir -p "$SOURCES"
  for split in train $SPLITS; do
    "$PYTHON" experiments/scitldr_guided.py "$DATA/scitldr/$split.jsonl" "$SOURCES/$split.jsonl"
  done
fi
if [ ! -f "$WORK/model/ckpt-$STEPS/training_state.pt" ]; then
  "$PYTHON" run_seq2seq.py --model_type bert --model_name_or_path "$MODEL_DIR" --fresh_head_init identity \
    --train_file "$SOURCES/train.jsonl" --output_dir "$WORK/model" --fine_tune pseudo_masked \
    --max_source_seq_length 256 --max_target_seq_length 48 --max_tokens_per_batch 4096 \
    --learning_rate 3e-4 --num_warmup_steps $((STEPS * 7 / 100)) --num_training_steps "$STEPS" \
    --dropout 0 --label_smoothing 0.1 \
    --precision "$PRECISION" --seed "$SEED" --save_steps 100 --save_total_limit 1 --logging_steps 50 \
    "${COPY_FLAG[@]}"
fi
for split in $SPLITS; do
  # shellcheck disable=SC2086  # SEARCH_FLAGS is a list of flags
  "$PYTHON" decode_seq2seq.py --model_path "$WORK/model/ckpt-$STEPS" --input_file "$SOURCES/$split.jsonl" \
    --output_file "$WORK/$split.pred.txt" --precision "$PRECISION" --batch_size 32 --max_tgt_length 48 \
    --detokenize text --beam_size 5 --length_penalty "$LENGTH_PENALTY" --min_len "$MIN_LEN" \
    --forbid_duplicate_ngrams --ngram_size 2 --resume $SEARCH_FLAGS
  "$PYTHON" -m s2s_ft.cli.evaluate --hyp "$WORK/$split.pred.txt" --ref "$DATA/scitldr/$split.jsonl" --metrics rouge \
    --json "$WORK/$split.scores.json"
done
for split in $SPLITS; do "$PYTHON" experiments/scitldr_baselines.py "$DATA/scitldr/$split.jsonl"; done
