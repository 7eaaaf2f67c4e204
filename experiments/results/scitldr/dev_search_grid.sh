#!/usr/bin/env bash
# decode SciTLDR dev with several search settings, ROUGE against dev refs (tuning set, not test)
#   bash experiments/results/scitldr/dev_search_grid.sh CKPT OUT   # CKPT: the trained ckpt-600, OUT: a scratch dir
set -uo pipefail
CKPT=$(realpath "$1"); OUT=$(realpath -m "$2"); mkdir -p "$OUT"
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
run() { name=$1; shift
  [ -f $OUT/$name.txt ] || python decode_seq2seq.py --model_path $CKPT --input_file ../shared/data/scitldr/dev.jsonl --output_file $OUT/$name.txt \
     --precision bf16 --batch_size 32 --max_tgt_length 48 --detokenize text --beam_size 5 "$@" 2>/dev/null
  python -m s2s_ft.cli.evaluate --hyp $OUT/$name.txt --ref ../shared/data/scitldr/dev.jsonl --metrics rouge --json $OUT/$name.json >/dev/null 2>&1
  python -c "import json,sys; s=json.load(open('$OUT/$name.json')); h=open('$OUT/$name.txt').read().splitlines(); print('$name', round(s['rouge1'],2), round(s['rouge2'],2), round(s['rougeL'],2), 'distinct', round(len(set(h))/len(h),3), 'words', round(sum(len(x.split()) for x in h)/len(h),1))"
}
run a_lp0_min10_ng3 --length_penalty 0 --min_len 10 --forbid_duplicate_ngrams --ngram_size 3
run b_lp1_min20_ng3 --length_penalty 1.0 --min_len 20 --forbid_duplicate_ngrams --ngram_size 3
run c_lp1_min20_ng2 --length_penalty 1.0 --min_len 20 --forbid_duplicate_ngrams --ngram_size 2
run d_lp0_min10_ng2 --length_penalty 0 --min_len 10 --forbid_duplicate_ngrams --ngram_size 2
run e_lp1_min15_ng2 --length_penalty 1.0 --min_len 15 --forbid_duplicate_ngrams --ngram_size 2
