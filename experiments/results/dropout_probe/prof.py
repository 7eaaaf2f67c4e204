import os, sys, time, torch
# run from anywhere: the repository root is three folders up; WORK below is a scratch folder
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from s2s_ft.train import build_parser
from s2s_ft import training
from s2s_ft.distributed import World
from s2s_ft.minilm import minilm_dir
m = minilm_dir()
args = build_parser().parse_args(f"--model_type bert --model_name_or_path {m} --fresh_head_init identity --train_file ../shared/data/squad_qg/train.jsonl --output_dir WORK/prof/out --fine_tune pseudo_masked --max_source_seq_length 96 --max_target_seq_length 32 --max_tokens_per_batch 2400 --learning_rate 5e-4 --num_warmup_steps 200 --num_training_steps 2800 --precision bf16 --seed 1 --save_steps 100000".split())
from s2s_ft.train import resolve_args, init_world
args = resolve_args(args)
world = init_world(False)
run = training.start_run(args, world)
win = training.LogWindow()
for _ in range(3): training.train_step(run, win)
t = time.time()
for _ in range(5): training.train_step(run, win)
print("s/step", (time.time() - t) / 5)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(3): training.train_step(run, win)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
