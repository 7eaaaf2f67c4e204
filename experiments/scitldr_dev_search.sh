#!/usr/bin/env bash
# The search grid on the SciTLDR dev abstracts for a trained model (minimum length x length penalty; beam 5, no
# repeated bigram, --source_words_only as in scitldr_recipe.sh): one prediction file and one ROUGE JSON per setting,
# and a line per setting with its ROUGE-1/2/L and mean output words. Choose on dev, then decode test once.
#
#   bash experiments/scitldr_dev_search.sh DATA_DIR WORK_DIR
#
# WORK_DIR is a scitldr_recipe.sh work directory: the model is its model/ run's last checkpoint, the sources its
# sources/ (GUIDE=1) or DATA_DIR/scitldr/; writes WORK_DIR/dev_search/. Overridable: GRID ("MIN_LEN:PENALTY ...").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_common.sh"
GRID="${GRID:-15:1.0 15:2.0 20:1.0 20:2.0 25:1.0}"
MODEL="$(last_checkpoint "$WORK/model")"
[ -n "$MODEL" ] || { echo "error: no finished checkpoint in $WORK/model" >&2; exit 2; }
SOURCES="$DATA/scitldr"
if [ -f "$WORK/sources/dev.jsonl" ]; then SOURCES="$WORK/sources"; fi
OUT="$WORK/dev_search"
mkdir -p "$OUT"
for setting in $GRID; do
  min_len="${setting%%:*}"
  penalty="${setting##*:}"
  tag="min${min_len}_lp${penalty}"
  "$PYTHON" decode_seq2seq.py --model_path "$MODEL" --input_file "$SOURCES/dev.jsonl" \
    --output_file "$OUT/dev.$tag.txt" \
    --precision "$PRECISION" --batch_size 32 --max_tgt_length 48 --detokenize text --beam_size 5 \
    --length_penalty "$penalty" --min_len "$min_len" --forbid_duplicate_ngrams --ngram_size 2 --source_words_only \
    --resume
  "$PYTHON" -m s2s_ft.cli.evaluate --hyp "$OUT/dev.$tag.txt" --ref "$DATA/scitldr/dev.jsonl" --metrics rouge \
    --json "$OUT/dev.$tag.json" > /dev/null
  "$PYTHON" -c 'import json, sys
s = json.load(open(sys.argv[1]))
words = [len(line.split()) for line in open(sys.argv[2])]
scores = (f"{k} {s[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL"))
print(sys.argv[3], *scores, f"words {sum(words) / len(words):.1f}")' \
    "$OUT/dev.$tag.json" "$OUT/dev.$tag.txt" "$tag"
done
