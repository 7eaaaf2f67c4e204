#!/usr/bin/env bash
# Issue-2 check: fine-tune all-MiniLM-L6-v2 with each method for a fixed number of steps on SQuAD-QG and show that
# the logged loss falls, with tokens/s. Usage: bash benchmarks/squad_qg_methods.sh [DATA_DIR] [STEPS] [OUT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${1:-../shared/data/squad_qg}"
STEPS="${2:-200}"
OUT="${3:-runs/squad_qg_methods}"
MODEL_DIR="$(python -c 'from s2s_ft.model.minilm import minilm_dir; print(minilm_dir())')"
for METHOD in causal masked pseudo_masked; do
  python run_seq2seq.py --model_type bert --model_name_or_path "$MODEL_DIR" \
    --train_file "$DATA/train.jsonl" --output_dir "$OUT/$METHOD" --fine_tune "$METHOD" \
    --max_source_seq_length 96 --max_target_seq_length 32 --per_device_train_batch_size 16 \
    --learning_rate 1e-4 --num_warmup_steps 20 --num_training_steps "$STEPS" --logging_steps 20 \
    --save_steps "$STEPS" --log_level WARNING
done
python - "$OUT" <<'PY'
import json, sys, os
for method in ("causal", "masked", "pseudo_masked"):
    log = [json.loads(l) for l in open(os.path.join(sys.argv[1], method, "train_log.jsonl"))]
    losses = " ".join(f"{r['loss']:.2f}" for r in log)
    tps = sum(r["tokens_per_s"] for r in log[1:]) / max(1, len(log) - 1)
    ttps = sum(r["target_tokens_per_s"] for r in log[1:]) / max(1, len(log) - 1)
    print(f"{method:14s} loss by 20 steps: {losses} | {tps:.0f} tokens/s, {ttps:.0f} target tokens/s")
PY
