#!/usr/bin/env bash
# sci_grid.sh: decode SciTLDR dev with several search settings, ROUGE against dev refs (tuning set, not test)
set -uo pipefail
CKPT=/work/runs/sci/scitldr/pseudo_masked/seed1/model/ckpt-600; OUT=/work/runs/sci_grid; mkdir -p $OUT
cd /work/exp-sci
run() { name=$1; shift
  [ -f $OUT/$name.txt ] || python decode_seq2seq.py --model_path $CKPT --input_file /work/shared/data/scitldr/dev.jsonl --output_file $OUT/$name.txt \
     --precision bf16 --batch_size 32 --max_tgt_length 48 --detokenize text --beam_size 5 "$@" 2>/dev/null
  python -m s2s_ft.evaluate --hyp $OUT/$name.txt --ref /work/shared/data/scitldr/dev.jsonl --metrics rouge --json $OUT/$name.json >/dev/null 2>&1
  python -c "import json,sys; s=json.load(open('$OUT/$name.json')); h=open('$OUT/$name.txt').read().splitlines(); print('$name', round(s['rouge1'],2), round(s['rouge2'],2), round(s['rougeL'],2), 'distinct', round(len(set(h))/len(h),3), 'words', round(sum(len(x.split()) for x in h)/len(h),1))"
}
run a_lp0_min10_ng3 --length_penalty 0 --min_len 10 --forbid_duplicate_ngrams --ngram_size 3
run b_lp1_min20_ng3 --length_penalty 1.0 --min_len 20 --forbid_duplicate_ngrams --ngram_size 3
run c_lp1_min20_ng2 --length_penalty 1.0 --min_len 20 --forbid_duplicate_ngrams --ngram_size 2
run d_lp0_min10_ng2 --length_penalty 0 --min_len 10 --forbid_duplicate_ngrams --ngram_size 2
run e_lp1_min15_ng2 --length_penalty 1.0 --min_len 15 --forbid_duplicate_ngrams --ngram_size 2
