# Sourced by the experiment recipes (squad_qg_recipe.sh, scitldr_recipe.sh): checks the two arguments
# (DATA_DIR WORK_DIR), moves to the repository root and sets DATA, WORK, PYTHON, MODEL_DIR (default: the pip-installed
# all-MiniLM-L6-v2; a training run's output directory stands for its last complete checkpoint, so a recipe can start
# from another recipe's model, e.g. WORK_DIR/model of squad_qg_recipe.sh) and PRECISION (bf16 where the CPU computes
# bf16 natively, AVX512-BF16 / AMX; elsewhere it is emulated and slower than fp32). Relative paths are taken from the
# repository root, as the scripts always did.
if [ $# -ne 2 ]; then
  echo "usage: bash $0 DATA_DIR WORK_DIR" >&2
  exit 2
fi
DATA="$1"
WORK="$2"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
MODEL_DIR="${MODEL_DIR:-$("$PYTHON" -c 'from s2s_ft.model.minilm import minilm_dir; print(minilm_dir())')}"
PRECISION="${PRECISION:-$(grep -q -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo fp32)}"

# The last complete checkpoint (ckpt-STEP) of a training run's output directory; empty if it has none.
last_checkpoint() {
  "$PYTHON" -c 'import sys; from s2s_ft.training.rundir import latest_checkpoint as last
print(last(sys.argv[1]) or "")' "$1"
}
if [ ! -f "$MODEL_DIR/config.json" ] && [ -d "$MODEL_DIR" ]; then
  RUN_CHECKPOINT="$(last_checkpoint "$MODEL_DIR")"
  MODEL_DIR="${RUN_CHECKPOINT:-$MODEL_DIR}"
fi

# The QG recipes' evaluation during training, on a dev sample (greedy, grouped BLEU-4 as the scorer computes it):
# sets EVAL_FLAGS, empty when EVAL_SAMPLE is 0.
qg_eval_flags() {  # SAMPLE_FILE EVAL_STEPS
  EVAL_FLAGS=()
  if [ "${EVAL_SAMPLE:-1}" != 0 ]; then
    EVAL_FLAGS=(--eval_file "$1" --eval_max_examples 0 --eval_steps "$2" --detokenize ptb --eval_metric bleu4_tok
                --eval_metrics bleu,rouge --eval_batch_size 64)
  fi
}
