#!/usr/bin/env bash
# The search grid for an answer-aware QG model on a dev subset (beam size x length penalty x minimum length; n-gram
# blocking as in squad_qg_answer_recipe.sh): one prediction file per setting and a line per setting with grouped
# BLEU-4 / METEOR / ROUGE-L and mean output words, scored as the recipe scores (squad_qg_answer.py). Choose on dev,
# then decode test once with the chosen setting (DECODE_FLAGS of the recipe).
#
#   bash experiments/squad_qg_answer_search.sh DATA_DIR WORK_DIR
#
# WORK_DIR is a squad_qg_answer_recipe.sh work directory (its model/ run's last checkpoint, its dev.grouped.jsonl);
# writes WORK_DIR/dev_search/. Overridable: GRID ("BEAM:PENALTY:MIN_LEN ..."), EVERY (5: every 5th dev pair).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
GRID="${GRID:-5:2.0:6 5:1.0:6 5:3.0:6 5:2.0:4 5:2.0:8 5:3.0:8 8:2.0:6 8:2.0:8 8:3.0:6 8:3.0:8 10:2.5:8}"  # the grid searched for the recorded run
EVERY="${EVERY:-5}"
MODEL="$(last_checkpoint "$WORK/model")"
[ -n "$MODEL" ] || { echo "error: no finished checkpoint in $WORK/model" >&2; exit 2; }
OUT="$WORK/dev_search"
mkdir -p "$OUT"
SUBSET="$OUT/dev.every$EVERY.jsonl"
[ -f "$SUBSET" ] || "$PYTHON" -c 'import sys
lines = open(sys.argv[1], encoding="utf-8").readlines()[::int(sys.argv[3])]
open(sys.argv[2], "w", encoding="utf-8").writelines(lines)' "$WORK/dev.grouped.jsonl" "$SUBSET" "$EVERY"
for setting in $GRID; do
  IFS=: read -r beam penalty min_len <<< "$setting"
  tag="beam${beam}_lp${penalty}_min${min_len}"
  "$PYTHON" decode_seq2seq.py --model_path "$MODEL" --input_file "$SUBSET" --output_file "$OUT/dev.$tag.txt" \
    --precision "$PRECISION" --batch_size 64 --max_tgt_length 32 --detokenize ptb --beam_size "$beam" \
    --length_penalty "$penalty" --min_len "$min_len" --forbid_duplicate_ngrams --ngram_size 3 --resume \
    --log_level WARNING
  "$PYTHON" experiments/squad_qg_answer.py score "$SUBSET" "$OUT/dev.$tag.txt" --json "$OUT/dev.$tag.json" \
    > /dev/null 2>&1
  "$PYTHON" -c 'import json, sys
s = json.load(open(sys.argv[1]))
words = [len(line.split()) for line in open(sys.argv[2])]
print(sys.argv[3], *(f"{k} {s[k]:.2f}" for k in ("bleu4_tok", "meteor", "rougeL")), f"words {sum(words) / len(words):.1f}")' \
    "$OUT/dev.$tag.json" "$OUT/dev.$tag.txt" "$tag"
done
