# Sourced by the experiment recipes (squad_qg_recipe.sh, scitldr_recipe.sh): checks the two arguments
# (DATA_DIR WORK_DIR), moves to the repository root and sets DATA, WORK, PYTHON, MODEL_DIR (default: the pip-installed
# all-MiniLM-L6-v2) and PRECISION (bf16 where the CPU computes bf16 natively, AVX512-BF16 / AMX; elsewhere it is
# emulated and slower than fp32). Relative paths are taken from the repository root, as the scripts always did.
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
