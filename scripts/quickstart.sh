#!/usr/bin/env bash
# The main job on the built-in default: fine-tune all-MiniLM-L6-v2 (pseudo-masked s2s-ft) to generate
# WordNet definitions ("dog (noun)" -> "a member of the genus Canis ..."), decode the dev set, print scores
# and samples.
#
#   bash scripts/quickstart.sh            # 800 training steps
#   STEPS=50 bash scripts/quickstart.sh   # a quick smoke run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
STEPS="${STEPS:-800}"
RUN=runs/quickstart
MODEL="$RUN/model-$STEPS"  # one run per length: a restart with another --num_training_steps would be refused

bash scripts/setup.sh --with-wordnet

"$PYTHON" examples/wordnet_glosses.py --output_dir "$RUN/data"

MODEL_DIR="$("$PYTHON" -c 'from s2s_ft.model.minilm import minilm_dir; print(minilm_dir())')"

# The recipe for small or head-less checkpoints (README, "Recommended settings"): the fresh MLM head starts as the
# identity, a high peak learning rate with warmup, token-budget batches, bf16 where the CPU computes it natively.
PRECISION="${PRECISION:-$(grep -q -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo fp32)}"
echo "== training $STEPS steps ($PRECISION); about 9 minutes on a 2-core CPU with native bf16, longer in fp32 =="
"$PYTHON" run_seq2seq.py \
  --model_type bert \
  --model_name_or_path "$MODEL_DIR" \
  --fresh_head_init identity \
  --train_file "$RUN/data/train.jsonl" \
  --output_dir "$MODEL" \
  --fine_tune pseudo_masked \
  --max_source_seq_length 32 \
  --max_target_seq_length 48 \
  --max_tokens_per_batch 1200 \
  --learning_rate 5e-4 \
  --num_training_steps "$STEPS" \
  --num_warmup_steps "$((STEPS / 10))" \
  --precision "$PRECISION" \
  --logging_steps 20 \
  --save_steps "$STEPS"

"$PYTHON" decode_seq2seq.py \
  --model_path "$MODEL/ckpt-$STEPS" \
  --input_file "$RUN/data/dev.jsonl" \
  --output_file "$RUN/dev.pred.txt" \
  --beam_size 5 \
  --length_penalty 1.0 \
  --min_len 4 \
  --forbid_duplicate_ngrams \
  --max_tgt_length 48

echo
echo "== scores on the dev set (all definitions of each lemma as references) =="
"$PYTHON" -m s2s_ft.cli.evaluate --hyp "$RUN/dev.pred.txt" --ref "$RUN/data/dev.jsonl" \
  --metrics rouge,bleu,meteor --json "$RUN/dev.scores.json"
echo
echo "== the bar: the best constant output (a frequent opening of the training definitions), same scorer =="
"$PYTHON" -m s2s_ft.evaluation.baselines --train "$RUN/data/train.jsonl" --ref "$RUN/data/dev.jsonl" \
  --metrics rouge,bleu --json "$RUN/dev.baselines.json"
"$PYTHON" - "$RUN/dev.pred.txt" <<'PY'
import sys
with open(sys.argv[1], encoding="utf-8") as f:
    preds = [line.rstrip("\n") for line in f]
print(f"model outputs: {len(set(preds))} distinct of {len(preds)} ({100 * len(set(preds)) / len(preds):.0f} %)")
PY

echo
echo "== first 10 dev examples: source / prediction / reference =="
"$PYTHON" - "$RUN/data/dev.jsonl" "$RUN/dev.pred.txt" <<'PY'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
with open(sys.argv[2], encoding="utf-8") as f:
    preds = [line.rstrip("\n") for line in f]
for row, pred in list(zip(rows, preds))[:10]:
    print(f"src:  {row['src']}\npred: {pred}\nref:  {row['tgt']}\n")
PY
