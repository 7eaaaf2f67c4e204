"""Method comparison: our three fine-tuning methods against HF bert2bert, same checkpoint, same budget.

Four systems, all starting from the same checkpoint (default: the packaged all-MiniLM-L6-v2):

* ``causal``, ``masked``, ``pseudo_masked``: one shared Transformer, fine-tuned with ``run_seq2seq.py
  --model_type bert --fine_tune METHOD`` and decoded with ``decode_seq2seq.py`` (the user-facing CLIs);
* ``hf_bert2bert``: ``EncoderDecoderModel.from_encoder_decoder_pretrained(ckpt, ckpt)`` (a separate encoder and
  decoder, both warm-started, the decoder's cross-attention new and random), trained and decoded by
  ``experiments/hf_bert2bert.py`` with our trainer's example reader, batch order, optimizer and schedule.

Every system gets the same training examples in the same order (per seed), the same batch size, number of
optimizer steps, learning rate and linear warmup/decay, label smoothing, maximum lengths, and the same beam size,
maximum output length and length penalty at decoding time. All are scored by ``python -m s2s_ft.evaluate --json``
against the same reference file.

Datasets (``--data_root``, read only):

* ``squad_qg``: train on ``train.jsonl``, evaluate on the first ``--eval_examples`` lines of ``dev.jsonl``
  (one reference each); BLEU-4 (sacreBLEU and the tokenised QG-paper BLEU-4), METEOR, ROUGE-L;
* ``scitldr``: train on ``train.jsonl``, evaluate on ``test.jsonl`` (multi-reference ``refs``, at most
  ``--eval_examples`` lines: all 618 by default); ROUGE-1/2/L.

Each (dataset, system, seed) unit lives in ``WORK_DIR/DATASET/SYSTEM/seedS/`` and is done in three stages, each
skipped when its output exists: training (``model/``; an interrupted run resumes from its last checkpoint),
decoding (``pred.txt``, written atomically), scoring (``scores.json``, renamed into place). The settings of a
dataset are recorded in ``WORK_DIR/DATASET/settings.json``; re-running with different settings stops with a
message instead of mixing runs. The tables (mean +- sample standard deviation over seeds) go to stdout,
``WORK_DIR/results.md`` and ``WORK_DIR/results.json``.

    python experiments/method_comparison.py --data_root ../shared/data --work_dir /tmp/method_comparison

Per-dataset flags take one value for all datasets or ``name=value`` pairs: ``--steps squad_qg=800,scitldr=400``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root, for s2s_ft

from s2s_ft.fileio import write_atomic  # noqa: E402

HF_SCRIPT = os.path.join(ROOT, "experiments", "hf_bert2bert.py")
OUR_METHODS = ("causal", "masked", "pseudo_masked")
SYSTEMS = (*OUR_METHODS, "hf_bert2bert")


@dataclass(frozen=True)
class Dataset:
    train: str
    eval: str
    metrics: str  # s2s_ft.evaluate --metrics
    columns: tuple  # (scores.json key, table header) in table order


DATASETS = {
    "squad_qg": Dataset("train.jsonl", "dev.jsonl", "bleu,meteor,rouge",
                        (("bleu", "BLEU-4 (sacre)"), ("bleu4_tok", "BLEU-4 (QG tok)"), ("meteor", "METEOR"),
                         ("rougeL", "ROUGE-L"))),
    "scitldr": Dataset("train.jsonl", "test.jsonl", "rouge",
                       (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"))),
}

# Per-dataset defaults, chosen to keep the full run CPU-feasible (see experiments/README.md). MiniLM word pieces:
# SQuAD-QG sources have mean 39 / p99 106, 96 keeps 98% whole; questions mean 13, 32 keeps 99.9%. SciTLDR abstracts
# have mean 213 / p90 299, 256 keeps 76% whole (the rest lose their last sentences); TLDRs mean 26, 48 keeps 98%.
DEFAULTS = {
    "steps": {"squad_qg": 600, "scitldr": 300},
    "batch_size": {"squad_qg": 16, "scitldr": 8},
    "lr": {"squad_qg": 1e-4, "scitldr": 1e-4},
    "max_source_len": {"squad_qg": 96, "scitldr": 256},
    "max_target_len": {"squad_qg": 32, "scitldr": 48},
}
PER_DATASET_TYPES = {"steps": int, "batch_size": int, "lr": float, "max_source_len": int, "max_target_len": int}


# -- arguments -------------------------------------------------------------------------------------------------
def per_dataset(text: str | None, defaults: dict, kind, datasets) -> dict:
    """``"800"`` -> that value for every dataset; ``"squad_qg=800,scitldr=400"`` -> per dataset, the rest default."""
    values = dict(defaults)
    if text is None:
        return values
    if "=" not in text:
        return {name: kind(text) for name in datasets}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r} in {text!r}: choose from {', '.join(DATASETS)}")
        values[name.strip()] = kind(value)
    return values


def comma_list(text: str, allowed) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SystemExit(f"unknown {', '.join(unknown) or '(none given)'}: choose from {', '.join(allowed)}")
    return items


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Per-dataset flags take N or "
                                "name=N,name=N.")
    p.add_argument("--data_root", default=os.path.join(os.path.dirname(ROOT), "shared", "data"),
                   help="holds squad_qg/ and scitldr/ (default: ../shared/data next to the repo)")
    p.add_argument("--work_dir", default="/tmp/method_comparison",
                   help="all outputs (outside the repo; default %(default)s)")
    p.add_argument("--model_dir", default=None, help="the starting checkpoint (default: all-MiniLM-L6-v2)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset (default %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset (default %(default)s)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated (default %(default)s)")
    for name, defaults in DEFAULTS.items():
        p.add_argument(f"--{name}", default=None,
                       help=f"per dataset; default {','.join(f'{k}={v}' for k, v in defaults.items())}")
    p.add_argument("--warmup_ratio", type=float, default=0.1,
                   help="linear warmup steps = ratio x steps (default %(default)s)")
    p.add_argument("--label_smoothing", type=float, default=0.1, help="default %(default)s")
    p.add_argument("--eval_examples", type=int, default=1000,
                   help="the first N lines of the evaluation file (fewer when it is shorter; default %(default)s)")
    p.add_argument("--beam_size", type=int, default=5, help="default %(default)s")
    p.add_argument("--length_penalty", type=float, default=0.0,
                   help="0 ranks by the sum of log-probs in both decoders (non-zero: GNMT's formula in ours, "
                        "len**alpha in HF's; default %(default)s)")
    p.add_argument("--no_repeat_ngram", type=int, default=0,
                   help="N > 0: never repeat an N-gram (ours --forbid_duplicate_ngrams, HF "
                        "no_repeat_ngram_size; default off)")
    p.add_argument("--decode_batch_size", type=int, default=32, help="default %(default)s")
    p.add_argument("--save_steps", type=int, default=250,
                   help="checkpoint every N steps: resume points (default %(default)s)")
    p.add_argument("--dry_run", action="store_true", help="list the units and their state, run nothing")
    args = p.parse_args(argv)
    args.data_root, args.work_dir = os.path.abspath(args.data_root), os.path.abspath(args.work_dir)
    args.datasets = comma_list(args.datasets, DATASETS)
    args.systems = comma_list(args.systems, SYSTEMS)
    try:
        args.seeds = sorted({int(seed) for seed in args.seeds.split(",") if seed.strip()})
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if not args.seeds:
        raise SystemExit("--seeds: none given")
    for name, kind in PER_DATASET_TYPES.items():
        setattr(args, name, per_dataset(getattr(args, name), DEFAULTS[name], kind, DATASETS))
    return args


def settings_for(args, dataset: str, model_dir: str) -> dict:
    """Everything that changes a dataset's numbers (seeds and systems are units, not settings)."""
    steps = args.steps[dataset]
    return {"model_dir": model_dir, "steps": steps, "batch_size": args.batch_size[dataset], "lr": args.lr[dataset],
            "warmup_steps": round(args.warmup_ratio * steps), "label_smoothing": args.label_smoothing,
            "max_source_len": args.max_source_len[dataset], "max_target_len": args.max_target_len[dataset],
            "eval_examples": args.eval_examples, "beam_size": args.beam_size,
            "length_penalty": args.length_penalty, "no_repeat_ngram": args.no_repeat_ngram}


# -- tables (pure functions; tests/test_experiment_tables.py) ----------------------------------------------------
def mean_std(values: list) -> tuple:
    """(mean, sample standard deviation); the deviation is None for fewer than two values."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(per_seed: dict, keys) -> dict:
    """``{system: {seed: scores}}`` -> ``{system: {key: {"mean", "std", "n", "values"}}}`` over the seeds that have
    scores (systems without any are left out)."""
    table = {}
    for system, seeds in per_seed.items():
        if not seeds:
            continue
        row = {}
        for key in keys:
            values = [seeds[seed][key] for seed in sorted(seeds) if key in seeds[seed]]
            if values:
                mean, std = mean_std(values)
                row[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
        table[system] = row
    return table


def format_cell(cell: dict | None) -> str:
    if not cell:
        return "–"
    if cell["std"] is None:
        return f"{cell['mean']:.2f}"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def markdown_table(aggregated: dict, columns, systems) -> str:
    """Rows = systems (in the given order), columns = metrics, cells ``mean ± std`` (just the mean for one seed);
    the best mean per column is bold."""
    best = {}
    for key, _ in columns:
        means = [round(aggregated[s][key]["mean"], 2) for s in systems if s in aggregated and key in aggregated[s]]
        # nothing to bold when every shown mean is the same (one system, or all tied)
        best[key] = max(means) if len(set(means)) > 1 else None
    lines = ["| system | seeds | " + " | ".join(header for _, header in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for system in systems:
        row = aggregated.get(system)
        if not row:
            lines.append(f"| {system} | 0 | " + " | ".join("–" for _ in columns) + " |")
            continue
        cells = []
        for key, _ in columns:
            text = format_cell(row.get(key))
            if key in row and round(row[key]["mean"], 2) == best[key]:
                text = f"**{text}**"
            cells.append(text)
        seeds = max(cell["n"] for cell in row.values())
        lines.append(f"| {system} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------------------------
def run_logged(command: list, log_path: str, what: str) -> float:
    """Run a CLI from the repo root with its output appended to ``log_path``; returns seconds. On failure: the
    log's tail and exit."""
    print(f"  {what}: {' '.join(command)}", flush=True)
    started = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM: never leave a trainer running that a re-run would race
            process.terminate()
            process.wait()
            raise
    if returncode:
        with open(log_path, errors="replace") as log:
            tail = log.read()[-3000:]
        raise SystemExit(f"{what} failed (exit {returncode}); last lines of {log_path}:\n{tail}")
    return time.time() - started


def first_lines(source: str, path: str, count: int) -> int:
    """The first ``count`` non-blank lines of ``source`` to ``path`` (once); returns the number of lines."""
    if not os.path.isfile(path):
        with open(source, encoding="utf-8") as handle:
            lines = [line if line.endswith("\n") else line + "\n" for line in handle if line.strip()][:count]
        write_atomic(path, "".join(lines))
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def save_json(path: str, value) -> None:
    write_atomic(path, json.dumps(value, indent=2) + "\n")


class Unit:
    """One (dataset, system, seed): its directory, its stages' outputs and commands."""

    def __init__(self, args, dataset: str, system: str, seed: int, settings: dict, eval_file: str):
        self.dataset, self.system, self.seed, self.s = dataset, system, seed, settings
        self.args, self.eval_file = args, eval_file
        self.dir = os.path.join(args.work_dir, dataset, system, f"seed{seed}")
        self.model_dir = os.path.join(self.dir, "model")
        self.pred, self.scores = os.path.join(self.dir, "pred.txt"), os.path.join(self.dir, "scores.json")
        self.train_file = os.path.join(args.data_root, dataset, DATASETS[dataset].train)

    @property
    def final_model(self) -> str:
        if self.system == "hf_bert2bert":
            return os.path.join(self.model_dir, "final")
        return os.path.join(self.model_dir, f"ckpt-{self.s['steps']}")

    def trained(self) -> bool:
        # both trainers rename a finished checkpoint into place: the directory exists complete or not at all
        return os.path.isfile(os.path.join(self.final_model, "config.json"))

    def state(self) -> str:
        if os.path.isfile(self.scores):
            return "done"
        if os.path.isfile(self.pred):
            return "decoded"
        if self.trained():
            return "trained"
        return "partly trained" if os.path.isdir(self.model_dir) and os.listdir(self.model_dir) else "to do"

    def train_command(self) -> list:
        s = self.s
        if self.system == "hf_bert2bert":
            return [sys.executable, HF_SCRIPT, "train", "--model_dir", s["model_dir"], "--train_file",
                    self.train_file, "--output_dir", self.model_dir, "--max_source_len", str(s["max_source_len"]),
                    "--max_target_len", str(s["max_target_len"]), "--batch_size", str(s["batch_size"]),
                    "--lr", str(s["lr"]), "--steps", str(s["steps"]), "--warmup_steps", str(s["warmup_steps"]),
                    "--label_smoothing", str(s["label_smoothing"]), "--seed", str(self.seed),
                    "--save_steps", str(self.args.save_steps), "--logging_steps", str(self.logging_steps())]
        return [sys.executable, "run_seq2seq.py", "--model_type", "bert", "--model_name_or_path", s["model_dir"],
                "--train_file", self.train_file, "--output_dir", self.model_dir, "--fine_tune", self.system,
                "--max_source_seq_length", str(s["max_source_len"]),
                "--max_target_seq_length", str(s["max_target_len"]),
                "--per_device_train_batch_size", str(s["batch_size"]), "--learning_rate", str(s["lr"]),
                "--num_training_steps", str(s["steps"]), "--num_warmup_steps", str(s["warmup_steps"]),
                "--label_smoothing", str(s["label_smoothing"]), "--seed", str(self.seed),
                "--save_steps", str(self.args.save_steps), "--save_total_limit", "1",
                "--logging_steps", str(self.logging_steps()),
                "--cache_dir", os.path.join(self.args.work_dir, self.dataset, "cache")]

    def logging_steps(self) -> int:
        return max(1, min(50, self.s["steps"] // 10))

    def decode_command(self) -> list:
        s = self.s
        if self.system == "hf_bert2bert":
            return [sys.executable, HF_SCRIPT, "decode", "--model_path", self.final_model, "--input_file",
                    self.eval_file, "--output_file", self.pred, "--max_source_len", str(s["max_source_len"]),
                    "--max_target_len", str(s["max_target_len"]), "--beam_size", str(s["beam_size"]),
                    "--length_penalty", str(s["length_penalty"]), "--no_repeat_ngram_size",
                    str(s["no_repeat_ngram"]), "--batch_size", str(self.args.decode_batch_size)]
        command = [sys.executable, "decode_seq2seq.py", "--model_path", self.final_model, "--input_file",
                   self.eval_file, "--output_file", self.pred, "--beam_size", str(s["beam_size"]),
                   "--length_penalty", str(s["length_penalty"]), "--max_tgt_length", str(s["max_target_len"]),
                   "--batch_size", str(self.args.decode_batch_size), "--resume"]
        if s["no_repeat_ngram"]:
            command += ["--forbid_duplicate_ngrams", "--ngram_size", str(s["no_repeat_ngram"])]
        return command

    def run(self) -> dict:
        """Run the stages still missing; returns the seconds each stage took in this call."""
        os.makedirs(self.dir, exist_ok=True)
        log = os.path.join(self.dir, "log.txt")
        timing = {}
        if not self.trained():
            resumed = self.state() == "partly trained"  # then train_s covers only the rest of the run
            timing["train_s"] = run_logged(self.train_command(), log, "train")
            if resumed:
                timing["train_resumed"] = True
            if not self.trained():
                raise SystemExit(f"training finished without {self.final_model}; see {log}")
        if not os.path.isfile(self.pred):
            timing["decode_s"] = run_logged(self.decode_command(), log, "decode")
        if not os.path.isfile(self.scores):
            temporary = self.scores + ".tmp"  # evaluate writes in place; a kill must not leave a "done" unit
            timing["score_s"] = run_logged(
                [sys.executable, "-m", "s2s_ft.evaluate", "--hyp", self.pred, "--ref", self.eval_file,
                 "--metrics", DATASETS[self.dataset].metrics, "--json", temporary], log, "score")
            os.replace(temporary, self.scores)
        if timing:
            timing_path = os.path.join(self.dir, "timing.json")
            previous = json.load(open(timing_path)) if os.path.isfile(timing_path) else {}
            save_json(timing_path, {**previous, **{k: round(v, 1) if isinstance(v, float) else v
                                                   for k, v in timing.items()}})
        return timing


def read_scores(unit: Unit) -> dict | None:
    return json.load(open(unit.scores)) if os.path.isfile(unit.scores) else None


def check_settings(path: str, settings: dict) -> None:
    if os.path.isfile(path):
        recorded = json.load(open(path))
        if recorded != settings:
            changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
            differences = ", ".join(f"{k}: {recorded.get(k)} -> {settings.get(k)}" for k in changed)
            raise SystemExit(f"{path} was written with other settings ({differences}); use another --work_dir "
                             "or the same flags")
    else:
        save_json(path, settings)


def report(args, units_by_dataset: dict, settings_by_dataset: dict) -> str:
    """The Markdown tables of every dataset, also written to results.md / results.json."""
    parts, results = [], {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "datasets": {}}
    for dataset, units in units_by_dataset.items():
        per_seed = {system: {} for system in args.systems}
        timings = {system: {} for system in args.systems}
        for unit in units:
            scores = read_scores(unit)
            if scores:
                per_seed[unit.system][unit.seed] = scores
            timing_path = os.path.join(unit.dir, "timing.json")
            if os.path.isfile(timing_path):
                timings[unit.system][unit.seed] = json.load(open(timing_path))
        columns = DATASETS[dataset].columns
        aggregated = aggregate(per_seed, [key for key, _ in columns])
        s = settings_by_dataset[dataset]
        n_eval = next((scores["n"] for seeds in per_seed.values() for scores in seeds.values()), None)
        parts.append(f"### {dataset}: {s['steps']} steps x batch {s['batch_size']}, lr {s['lr']}, "
                     f"src/tgt {s['max_source_len']}/{s['max_target_len']}, beam {s['beam_size']}, "
                     f"{n_eval if n_eval is not None else '?'} {DATASETS[dataset].eval.split('.')[0]} examples\n\n"
                     + markdown_table(aggregated, columns, args.systems))
        results["datasets"][dataset] = {"settings": s, "per_seed": per_seed, "aggregated": aggregated,
                                        "timing_s": timings}
    text = "\n\n".join(parts) + "\n\nmean ± sample standard deviation over seeds; best mean in bold.\n"
    write_atomic(os.path.join(args.work_dir, "results.md"), text)
    save_json(os.path.join(args.work_dir, "results.json"), results)
    return text


def eta_text(done_seconds: list, remaining: int) -> str:
    if not done_seconds or not remaining:
        return ""
    left = statistics.fmean(done_seconds) * remaining
    return f"; about {left / 3600:.1f} h left for {remaining} unit(s) at this pace"


def main(argv=None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through run_logged, which stops the child
    if args.model_dir is None:
        from s2s_ft.minilm import minilm_dir
        args.model_dir = minilm_dir()

    units_by_dataset, settings_by_dataset = {}, {}
    for dataset in args.datasets:
        folder = os.path.join(args.data_root, dataset)
        spec = DATASETS[dataset]
        for name in (spec.train, spec.eval):
            if not os.path.isfile(os.path.join(folder, name)):
                raise SystemExit(f"{os.path.join(folder, name)}: not found (--data_root)")
        settings = settings_for(args, dataset, os.path.abspath(args.model_dir))
        if not args.dry_run:
            os.makedirs(os.path.join(args.work_dir, dataset), exist_ok=True)
            check_settings(os.path.join(args.work_dir, dataset, "settings.json"), settings)
        eval_file = os.path.join(args.work_dir, dataset, f"eval.first{args.eval_examples}.jsonl")
        if not args.dry_run:
            first_lines(os.path.join(folder, spec.eval), eval_file, args.eval_examples)
        settings_by_dataset[dataset] = settings
        units_by_dataset[dataset] = [Unit(args, dataset, system, seed, settings, eval_file)
                                     for seed in args.seeds for system in args.systems]

    # seed-major order across datasets: the first seed fills every table (with one seed each) before any second
    units = sorted((unit for dataset_units in units_by_dataset.values() for unit in dataset_units),
                   key=lambda unit: (args.seeds.index(unit.seed), args.datasets.index(unit.dataset),
                                     args.systems.index(unit.system)))
    pending = [unit for unit in units if unit.state() != "done"]
    print(f"{len(units)} units, {len(units) - len(pending)} done, {len(pending)} to run; work dir {args.work_dir}")
    if args.dry_run:
        print("settings: " + json.dumps(settings_by_dataset))
        for unit in units:
            print(f"  {unit.dataset:9s} {unit.system:14s} seed {unit.seed}: {unit.state()}")
        return
    os.makedirs(args.work_dir, exist_ok=True)
    seconds = []
    for index, unit in enumerate(pending, 1):
        print(f"[{index}/{len(pending)}] {unit.dataset} {unit.system} seed {unit.seed} ({unit.state()})", flush=True)
        started = time.time()
        timing = unit.run()
        elapsed = time.time() - started
        complete = "train_s" in timing and not timing.get("train_resumed")
        if complete:  # a whole unit in this run: a fair sample for the estimate
            seconds.append(elapsed)
        per_step = timing["train_s"] / unit.s["steps"] if complete else 0
        print(f"  done in {elapsed:.0f}s" + (f" ({per_step:.2f} s/step incl. start-up)" if per_step else "")
              + eta_text(seconds, len(pending) - index), flush=True)
        report(args, units_by_dataset, settings_by_dataset)  # the tables so far, after every unit
    print()
    print(report(args, units_by_dataset, settings_by_dataset))
    print(f"written: {os.path.join(args.work_dir, 'results.md')}, {os.path.join(args.work_dir, 'results.json')}")


if __name__ == "__main__":
    main()
