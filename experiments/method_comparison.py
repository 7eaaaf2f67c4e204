"""Method comparison: our three fine-tuning methods against HF bert2bert, same checkpoint, same budget.

Four systems, all starting from the same checkpoint (default: the packaged all-MiniLM-L6-v2):

* ``causal``, ``masked``, ``pseudo_masked``: one shared Transformer, fine-tuned with ``run_seq2seq.py
  --model_type bert --fine_tune METHOD`` and decoded with ``decode_seq2seq.py`` (the user-facing CLIs);
* ``hf_bert2bert``: ``EncoderDecoderModel.from_encoder_decoder_pretrained(ckpt, ckpt)`` (a separate encoder and
  decoder, both warm-started, the decoder's cross-attention new and random), trained and decoded by
  ``experiments/hf_bert2bert.py`` with our trainer's example reader, batch order, optimizer and schedule.

All systems use the recipe of README "Recommended settings" (``experiments/squad_qg_recipe.sh`` for SQuAD-QG)
where it applies: the fresh MLM head starts as the identity (``--fresh_head_init identity``; for bert2bert the
decoder's LM head, see ``hf_bert2bert.py``), token-budget batches
(``--max_tokens``: rows x longest packed length; bert2bert counts encoder + decoder tokens, our causal packed
length, so at the same budget our masked and pseudo-masked layouts, which are longer, get fewer examples per batch),
a high peak learning rate with linear warmup (``--warmup_ratio`` x steps) and linear decay, bf16 autocast where
the CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo; else fp32; ``--precision``
overrides), and per-dataset search settings and output
detokenisation (SQuAD-QG: beam 5, length penalty 2.0, at least 6 tokens, no repeated trigram, Penn-Treebank
detokenisation as its references are tokenised). Every system gets the same training examples (per seed), the same
number of optimizer steps, learning rate and schedule, label smoothing, maximum lengths, precision, and the same
search settings at decoding time (bert2bert's length penalty is HF's ``len ** alpha``, ours GNMT's: they differ
when it is not 0). All are scored by ``python -m s2s_ft.cli.evaluate --json`` against the same reference file, plus two
checks that a system reads its source (``squad_qg.output_checks``: the fraction of distinct outputs and of outputs
sharing a content word with their source), shown as percentages and never bold.

Datasets (``--data_root``, read only):

* ``squad_qg``: train on ``train.jsonl``; evaluate as QG papers do (Du et al. 2017): one prediction per *distinct*
  source sentence of ``dev.jsonl`` (``squad_qg.group_by_source``: 6,795 sentences for 10,570 questions, in order of
  first appearance) against all questions of that sentence; the first ``--eval_examples`` grouped sentences (default
  all); BLEU-4 (sacreBLEU and the tokenised QG-paper BLEU-4), METEOR, ROUGE-L;
* ``scitldr``: train on ``train.jsonl``, evaluate on ``test.jsonl`` (multi-reference ``refs``, at most
  ``--eval_examples`` lines: all 618 by default); ROUGE-1/2/L.

Each (dataset, system, seed) unit lives in ``WORK_DIR/DATASET/SYSTEM/seedS/`` and is done in three stages, each
skipped when its output exists: training (``model/``; an interrupted run resumes from its last checkpoint),
decoding (``pred.txt``, written atomically), scoring (``scores.json``, renamed into place). The settings of a
dataset are recorded in ``WORK_DIR/DATASET/settings.json``; re-running with different settings stops with a
message instead of mixing runs. The tables (mean +- sample standard deviation over seeds) go to stdout,
``WORK_DIR/results.md`` and ``WORK_DIR/results.json``.

    python experiments/method_comparison.py --data_root ../shared/data --work_dir runs/method_comparison

Per-dataset flags take one value for all datasets or ``name=value`` pairs: ``--steps squad_qg=800,scitldr=400``.
``--max_tokens 0`` falls back to fixed batches of ``--batch_size`` examples.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the repo root, for s2s_ft
sys.path.insert(0, HERE)  # this folder, for squad_qg (already there when run as a script; not when imported)

from squad_qg import group_by_source, output_checks  # noqa: E402

from s2s_ft.decoding.detokenize import DETOKENIZERS  # noqa: E402
from s2s_ft.evaluation.metrics import read_hypotheses  # noqa: E402
from s2s_ft.fileio import write_atomic  # noqa: E402

HF_SCRIPT = os.path.join(ROOT, "experiments", "hf_bert2bert.py")
OUR_METHODS = ("causal", "masked", "pseudo_masked")
SYSTEMS = (*OUR_METHODS, "hf_bert2bert")


@dataclass(frozen=True)
class Dataset:
    train: str
    eval: str
    metrics: str  # s2s_ft.cli.evaluate --metrics
    columns: tuple  # (scores.json key, table header) in table order
    grouped: bool = False  # one record per distinct source, all its targets as refs (squad_qg.group_by_source)


DATASETS = {
    "squad_qg": Dataset("train.jsonl", "dev.jsonl", "bleu,meteor,rouge",
                        (("bleu", "BLEU-4 (sacre)"), ("bleu4_tok", "BLEU-4 (QG tok)"), ("meteor", "METEOR"),
                         ("rougeL", "ROUGE-L")), grouped=True),
    "scitldr": Dataset("train.jsonl", "test.jsonl", "rouge",
                       (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"))),
}
# output checks (squad_qg.output_checks, fractions in scores.json), shown as percentages after the metrics, never bold
CHECK_COLUMNS = (("distinct", "distinct %"), ("source_overlap", "src word %"))
PRECISIONS = ("fp32", "bf16")

# Per-dataset defaults, chosen to keep the full run CPU-feasible (see experiments/README.md). MiniLM word pieces:
# SQuAD-QG sources have mean 39 / p99 106, 96 keeps 98% whole; questions mean 13, 32 keeps 99.9%. SciTLDR abstracts
# have mean 213 / p90 299, 256 keeps 76% whole (the rest lose their last sentences); TLDRs mean 26, 48 keeps 98%.
# SQuAD-QG follows experiments/squad_qg_recipe.sh (README "Recommended settings"). SciTLDR: a budget of 4096 tokens
# holds ~11 pseudo-masked rows of a full 256-piece abstract with a 48-piece TLDR (~16 causal ones), a lower peak
# learning rate for the longer, fewer batches, and the search settings of the earlier comparison (natural text).
DEFAULTS = {
    "steps": {"squad_qg": 2800, "scitldr": 300},
    "max_tokens": {"squad_qg": 2400, "scitldr": 4096},
    "batch_size": {"squad_qg": 16, "scitldr": 8},
    "lr": {"squad_qg": 5e-4, "scitldr": 3e-4},
    "max_source_len": {"squad_qg": 96, "scitldr": 256},
    "max_target_len": {"squad_qg": 32, "scitldr": 48},
    "beam_size": {"squad_qg": 5, "scitldr": 5},
    "length_penalty": {"squad_qg": 2.0, "scitldr": 0.0},
    "min_len": {"squad_qg": 6, "scitldr": 1},
    "no_repeat_ngram": {"squad_qg": 3, "scitldr": 0},
    "detokenize": {"squad_qg": "ptb", "scitldr": "text"},
}
PER_DATASET_TYPES = {"steps": int, "max_tokens": int, "batch_size": int, "lr": float, "max_source_len": int,
                     "max_target_len": int, "beam_size": int, "length_penalty": float, "min_len": int,
                     "no_repeat_ngram": int, "detokenize": str}
PER_DATASET_HELP = {
    "max_tokens": "token-budget batches: rows x longest packed length <= N (0: fixed --batch_size batches)",
    "batch_size": "examples per batch when --max_tokens is 0",
    "length_penalty": "0 ranks by the sum of log-probs in both decoders (non-zero: GNMT's formula in ours, "
                      "len**alpha in HF's)",
    "min_len": "generated tokens before the closing [SEP] is allowed",
    "no_repeat_ngram": "N > 0: never repeat an N-gram (ours --forbid_duplicate_ngrams, HF no_repeat_ngram_size)",
    "detokenize": f"output text style ({', '.join(DETOKENIZERS)}; s2s_ft.decoding.detokenize)",
}


def cpu_precision(cpuinfo: str = "/proc/cpuinfo") -> str:
    """bf16 where the CPU computes it natively (AVX512-BF16 or AMX-BF16), else fp32 (emulated bf16 is slower),
    as experiments/squad_qg_recipe.sh chooses."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return "fp32"
    return "bf16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", text) else "fp32"


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
    p.add_argument("--work_dir", default=os.path.join("runs", "method_comparison"),
                   help="all outputs (default %(default)s: relative, git-ignored /runs/ when run from the repository root)")
    p.add_argument("--model_dir", default=None, help="the starting checkpoint (default: all-MiniLM-L6-v2)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset (default %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset (default %(default)s)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated (default %(default)s)")
    for name, defaults in DEFAULTS.items():
        p.add_argument(f"--{name}", default=None,
                       help=(PER_DATASET_HELP[name] + "; " if name in PER_DATASET_HELP else "")
                       + f"per dataset; default {','.join(f'{k}={v}' for k, v in defaults.items())}")
    p.add_argument("--warmup_ratio", type=float, default=0.07,
                   help="linear warmup steps = ratio x steps (default %(default)s: 196 of 2800, the recipe's ~200)")
    p.add_argument("--label_smoothing", type=float, default=0.1, help="default %(default)s")
    p.add_argument("--fresh_head_init", default="identity", choices=("random", "identity"),
                   help="how an LM head the checkpoint lacks starts (default %(default)s)")
    p.add_argument("--dropout", type=float, default=None,
                   help="hidden and attention dropout of every system (default: the checkpoint config's, as the "
                        "recipe; 0 learns faster early and ends lower, experiments/results/dropout_probe)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="training and decoding precision (default: bf16 if /proc/cpuinfo lists avx512_bf16 or "
                        "amx_bf16, else fp32)")
    p.add_argument("--eval_examples", type=int, default=0,
                   help="the first N evaluation records (squad_qg: grouped distinct sentences; 0, the default: all, "
                        "6,795 for squad_qg and 618 for scitldr)")
    p.add_argument("--decode_batch_size", type=int, default=32, help="default %(default)s")
    p.add_argument("--save_steps", type=int, default=250,
                   help="checkpoint every N steps: resume points (default %(default)s)")
    p.add_argument("--dry_run", action="store_true", help="list the units and their state, run nothing")
    p.add_argument("--report_only", action="store_true",
                   help="write results.md / results.json from the units already done, run nothing (to combine "
                        "queues that ran different --systems / --seeds in one work dir)")
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
    bad = {v for v in args.detokenize.values() if v not in DETOKENIZERS}
    if bad:
        raise SystemExit(f"--detokenize {', '.join(sorted(bad))}: choose from {', '.join(DETOKENIZERS)}")
    if args.eval_examples < 0:
        raise SystemExit(f"--eval_examples must be >= 0 (0: all), got {args.eval_examples}")
    if args.precision is None:
        args.precision = cpu_precision()
    return args


def settings_for(args, dataset: str, model_dir: str) -> dict:
    """Everything that changes a dataset's numbers (seeds and systems are units, not settings)."""
    steps = args.steps[dataset]
    return {"model_dir": model_dir, "steps": steps, "max_tokens": args.max_tokens[dataset],
            "batch_size": args.batch_size[dataset], "lr": args.lr[dataset],
            "warmup_steps": round(args.warmup_ratio * steps), "label_smoothing": args.label_smoothing,
            "fresh_head_init": args.fresh_head_init, "dropout": args.dropout, "precision": args.precision,
            "max_source_len": args.max_source_len[dataset], "max_target_len": args.max_target_len[dataset],
            "eval_examples": args.eval_examples, "grouped_eval": DATASETS[dataset].grouped,
            "beam_size": args.beam_size[dataset], "length_penalty": args.length_penalty[dataset],
            "min_len": args.min_len[dataset], "no_repeat_ngram": args.no_repeat_ngram[dataset],
            "detokenize": args.detokenize[dataset]}


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


def format_cell(cell: dict | None, scale: float = 1.0) -> str:
    if not cell:
        return "–"
    if cell["std"] is None:
        return f"{scale * cell['mean']:.2f}"
    return f"{scale * cell['mean']:.2f} ± {scale * cell['std']:.2f}"


def markdown_table(aggregated: dict, columns, systems, checks=()) -> str:
    """Rows = systems (in the given order), columns = metrics, cells ``mean ± std`` (just the mean for one seed);
    the best mean per column is bold. ``checks``: further (key, header) columns of fractions, shown as percentages
    after the metrics and never bold (more is not simply better)."""
    best = {}
    for key, _ in columns:
        means = [round(aggregated[s][key]["mean"], 2) for s in systems if s in aggregated and key in aggregated[s]]
        # nothing to bold when every shown mean is the same (one system, or all tied)
        best[key] = max(means) if len(set(means)) > 1 else None
    headers = [header for _, header in (*columns, *checks)]
    lines = ["| system | seeds | " + " | ".join(headers) + " |",
             "|---|---:|" + "---:|" * len(headers)]
    for system in systems:
        row = aggregated.get(system)
        if not row:
            lines.append(f"| {system} | 0 | " + " | ".join("–" for _ in headers) + " |")
            continue
        cells = []
        for key, _ in columns:
            text = format_cell(row.get(key))
            if key in row and round(row[key]["mean"], 2) == best[key]:
                text = f"**{text}**"
            cells.append(text)
        cells += [format_cell(row.get(key), 100.0) for key, _ in checks]
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


def eval_file_name(count: int, grouped: bool) -> str:
    return f"eval.{'grouped.' if grouped else ''}{f'first{count}' if count else 'all'}.jsonl"


def write_eval_file(source: str, path: str, count: int, grouped: bool) -> int:
    """The evaluation records to ``path`` (once): the first ``count`` (0: all) non-blank lines of ``source``, or
    with ``grouped`` the first ``count`` records of ``squad_qg.group_by_source(source)`` (one per distinct ``src``,
    all its targets as ``refs``). Returns the number of records in ``path``."""
    if not os.path.isfile(path):
        if grouped:
            lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in group_by_source(source)]
        else:
            with open(source, encoding="utf-8") as handle:
                lines = [line if line.endswith("\n") else line + "\n" for line in handle if line.strip()]
        write_atomic(path, "".join(lines[:count] if count else lines))
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def with_output_checks(scores: dict, pred_path: str, eval_path: str) -> dict:
    """``scores`` plus ``squad_qg.output_checks`` of the predictions against the evaluation file's sources
    (fractions, rounded to 4 places)."""
    outputs = read_hypotheses(pred_path)
    with open(eval_path, encoding="utf-8") as handle:
        sources = [json.loads(line)["src"] for line in handle if line.strip()]
    sources = [" ".join(src) if isinstance(src, list) else src for src in sources]  # word-piece lists
    if len(outputs) != len(sources):
        raise SystemExit(f"{pred_path}: {len(outputs)} lines, but {eval_path} has {len(sources)} records")
    return {**scores, **{key: round(value, 4) for key, value in output_checks(outputs, sources).items()}}


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
                    "--max_tokens_per_batch", str(s["max_tokens"]), "--fresh_head_init", s["fresh_head_init"],
                    "--precision", s["precision"],
                    "--lr", str(s["lr"]), "--steps", str(s["steps"]), "--warmup_steps", str(s["warmup_steps"]),
                    "--label_smoothing", str(s["label_smoothing"]), "--seed", str(self.seed),
                    "--save_steps", str(self.args.save_steps), "--logging_steps", str(self.logging_steps()),
                    *self.dropout_flag()]
        batching = (["--max_tokens_per_batch", str(s["max_tokens"])] if s["max_tokens"]
                    else ["--per_device_train_batch_size", str(s["batch_size"])])
        return [sys.executable, "run_seq2seq.py", "--model_type", "bert", "--model_name_or_path", s["model_dir"],
                "--fresh_head_init", s["fresh_head_init"],
                "--train_file", self.train_file, "--output_dir", self.model_dir, "--fine_tune", self.system,
                "--max_source_seq_length", str(s["max_source_len"]),
                "--max_target_seq_length", str(s["max_target_len"]),
                *batching, "--learning_rate", str(s["lr"]), "--precision", s["precision"],
                "--num_training_steps", str(s["steps"]), "--num_warmup_steps", str(s["warmup_steps"]),
                "--label_smoothing", str(s["label_smoothing"]), "--seed", str(self.seed),
                "--save_steps", str(self.args.save_steps), "--save_total_limit", "1",
                "--logging_steps", str(self.logging_steps()),
                "--cache_dir", os.path.join(self.args.work_dir, self.dataset, "cache"), *self.dropout_flag()]

    def dropout_flag(self) -> list:
        return [] if self.s["dropout"] is None else ["--dropout", str(self.s["dropout"])]

    def logging_steps(self) -> int:
        return max(1, min(50, self.s["steps"] // 10))

    def decode_command(self) -> list:
        s = self.s
        if self.system == "hf_bert2bert":
            return [sys.executable, HF_SCRIPT, "decode", "--model_path", self.final_model, "--input_file",
                    self.eval_file, "--output_file", self.pred, "--max_source_len", str(s["max_source_len"]),
                    "--max_target_len", str(s["max_target_len"]), "--beam_size", str(s["beam_size"]),
                    "--length_penalty", str(s["length_penalty"]), "--no_repeat_ngram_size",
                    str(s["no_repeat_ngram"]), "--min_len", str(s["min_len"]), "--detokenize", s["detokenize"],
                    "--precision", s["precision"], "--batch_size", str(self.args.decode_batch_size)]
        command = [sys.executable, "decode_seq2seq.py", "--model_path", self.final_model, "--input_file",
                   self.eval_file, "--output_file", self.pred, "--beam_size", str(s["beam_size"]),
                   "--length_penalty", str(s["length_penalty"]), "--min_len", str(s["min_len"]),
                   "--max_tgt_length", str(s["max_target_len"]), "--detokenize", s["detokenize"],
                   "--precision", s["precision"], "--batch_size", str(self.args.decode_batch_size), "--resume"]
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
                [sys.executable, "-m", "s2s_ft.cli.evaluate", "--hyp", self.pred, "--ref", self.eval_file,
                 "--metrics", DATASETS[self.dataset].metrics, "--json", temporary], log, "score")
            save_json(self.scores, with_output_checks(json.load(open(temporary)), self.pred, self.eval_file))
            os.remove(temporary)
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


def table_heading(dataset: str, s: dict, per_seed: dict) -> str:
    """One line: the settings that matter for reading a dataset's table, and what it was scored on."""
    n_eval = next((scores["n"] for seeds in per_seed.values() for scores in seeds.values()), None)
    n_text = "?" if n_eval is None else f"{n_eval:,}"
    batches = f"<= {s['max_tokens']} tokens" if s.get("max_tokens") else f"batch {s['batch_size']}"
    search = (f"beam {s['beam_size']}, length penalty {s['length_penalty']}, min {s['min_len']}"
              + (f", no repeated {s['no_repeat_ngram']}-gram" if s["no_repeat_ngram"] else "")
              + f", {s['detokenize']} detokenisation")
    what = (f"{n_text} distinct {DATASETS[dataset].eval.split('.')[0]} sentences, all their questions as references"
            if s.get("grouped_eval") else f"{n_text} {DATASETS[dataset].eval.split('.')[0]} examples")
    return (f"### {dataset}: {s['steps']} steps x {batches}, lr {s['lr']} (warmup {s['warmup_steps']}), "
            f"{s['precision']}, src/tgt {s['max_source_len']}/{s['max_target_len']}; {search}; {what}")


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
        aggregated = aggregate(per_seed, [key for key, _ in (*columns, *CHECK_COLUMNS)])
        parts.append(table_heading(dataset, settings_by_dataset[dataset], per_seed) + "\n\n"
                     + markdown_table(aggregated, columns, args.systems, CHECK_COLUMNS))
        results["datasets"][dataset] = {"settings": settings_by_dataset[dataset], "per_seed": per_seed,
                                        "aggregated": aggregated, "timing_s": timings}
    text = "\n\n".join(parts) + ("\n\nmean ± sample standard deviation over seeds; best mean in bold; distinct % and "
                                  "src word %: outputs that are distinct, and that share a content word with their "
                                  "source.\n")
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
        from s2s_ft.model.minilm import minilm_dir
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
        eval_file = os.path.join(args.work_dir, dataset, eval_file_name(args.eval_examples, spec.grouped))
        if not (args.dry_run or args.report_only):  # a report must not rewrite what running queues read
            count = write_eval_file(os.path.join(folder, spec.eval), eval_file, args.eval_examples, spec.grouped)
            print(f"{dataset}: {count} evaluation records in {eval_file}")
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
    if args.report_only:
        for unit in pending:
            print(f"  not done, left out: {unit.dataset} {unit.system} seed {unit.seed} ({unit.state()})")
        pending = []
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
