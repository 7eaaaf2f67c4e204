"""Decoding speed on a CPU against CTranslate2 (OpenNMT's C++ engine) and HF, side by side in one run (issue 42).

What runs, every system on the same sources and taking turns batch by batch in one process (so that a slow moment
of a noisy machine hits all alike), at each batch size of ``--batch_sizes`` and each beam of ``--beams``:

* ours: ``ours_fp32``, ``ours_int8`` (``--quantize int8``, s2s_ft/model/quantize.py) and, where the CPU computes
  bf16 natively (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo), ``ours_bf16`` (bf16 autocast);
* CTranslate2 running a randomly initialised BART of our checkpoint's width: d_model = our hidden size, encoder
  and decoder layers = our layer count each, our heads, FFN width and vocabulary (384, 6 + 6, 12, 1,536 and 30,522
  for all-MiniLM-L6-v2). That is the work HF bert2bert does for our checkpoint: a 6-layer encoder and a 6-layer
  decoder with cross-attention, the BART a CTranslate2 user would deploy for a model of this size. It is built
  with transformers' ``BartConfig``, saved, converted once by CTranslate2's own ``TransformersConverter`` (fp32)
  and loaded once per compute type: ``ct2_float32``, ``ct2_int8`` and ``ct2_bfloat16`` / ``ct2_int8_bfloat16``
  where the CPU has native bf16 *and* CTranslate2's CPU build offers them (``get_supported_compute_types``;
  the 4.x wheels offer no bf16 on CPUs, so these columns are usually absent: ``ours_bf16`` then stands beside
  the fp32 columns, never instead of them);
* HF bert2bert (``EncoderDecoderModel`` warm-started from ``--model_dir``) with ``generate`` in fp32, at the batch
  sizes of ``--hf_batch_sizes`` (default 16: ours against HF as benchmarks/decode_speed.py measures it).

Why the comparison is fair:

* **Equal work.** Every system generates exactly ``--tokens`` tokens per sentence (min length = max length; each
  hypothesis's length is asserted), with the same beam and the same batches. Random weights are therefore enough:
  the speed of a forced-length decode does not depend on what the weights say.
* **The same sources, token for token.** The sources are the first ``--sentences`` distinct ``src`` of ``--data``,
  cut into our tokenizer's word pieces. The BART is converted with our tokenizer's vocabulary (our tokenizer is
  saved next to the BART's config, and the converter reads it), so CTranslate2 receives the very pieces ours
  decodes, as token strings: ``[CLS] pieces [SEP]``, the source ours encodes, of equal length; its decoder starts
  from ``[CLS]``. HF gets the same text through the same tokenizer.
* **The same threads.** ``--threads`` for all: ``torch.set_num_threads`` and CTranslate2's ``intra_threads``
  (``inter_threads=1``: one batch at a time, as ours and HF).
* **Separate processes.** CTranslate2 runs in a process of its own (``Ct2Process``), sent one batch at a time
  while this process waits asleep: once CTranslate2 has run in a process, torch's decoding there stays slower
  (measured 2.7x at batch 1), so a shared process would measure an interference, not the engines. The pipe's
  round trip (a pickled batch of ids, well under a millisecond) is inside CTranslate2's time.
* **Nothing outside decoding is timed.** Tokenisation, loading and conversion happen before the clock; the id to
  token-string lookup CTranslate2's API needs (a list index per piece, microseconds) is inside it.

Each system runs one warm-up call, then ``--rounds`` rounds over the sentences; the figure is sentences per second
of the **median round** of each system: the median rather than the best because every system takes its turn in
every round, so a round slowed by the machine is slowed for all, and the median neither rewards one lucky round
nor keeps a first round that still allocates. The report starts with the CPU's model name and its flags that
matter here (avx512_vnni / amx_int8 for int8, avx512_bf16 / amx_bf16 for bf16), then one table: a row per (batch,
beam), sentences/s per system, and the ratios ours / CTranslate2 at equal precision (``fp32``: ours_fp32 /
ct2_float32, ``int8``: ours_int8 / ct2_int8, ``bf16``: ours_bf16 / ct2_bfloat16 where both exist, else
``bf16_vs_ct2_fp32``) and ours_fp32 / HF.

Our decoder does more per step than this BART in one respect (a pseudo-masked step feeds two tokens per
hypothesis through its single stack), and a fine-tuned ``--model_path`` with the copy mechanism adds its pointer
over the source, which the BART lacks; both count against us.

    pip install ctranslate2      # benchmark-only (or pip install -e ".[bench]"); never needed by the package
    python benchmarks/ctranslate2_speed.py --data ../shared/data/squad_qg_du/dev.jsonl --json ct2.json
    OMP_NUM_THREADS=1 python benchmarks/ctranslate2_speed.py --data ../shared/data/squad_qg_du/dev.jsonl \\
        --sentences 4 --tokens 4 --batch_sizes 1,2 --beams 1,2 --hf_batch_sizes 2 --rounds 1 --threads 1  # smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import sys
import tempfile

import torch
from decode_speed import (hf_generate_kwargs, hf_runner, load_hf_bert2bert, load_ours, ours_runner, read_sources,
                          source_ids, timed_turns)

from s2s_ft.decoding.search import Seq2SeqDecoder
from s2s_ft.model.minilm import minilm_dir

CPU_FLAGS = ("avx512f", "avx512_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
CPU = torch.device("cpu")


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise SystemExit("ctranslate2 is not installed: it is a benchmark-only dependency, "
                         "pip install ctranslate2 (or pip install -e '.[bench]')") from None
    return ctranslate2


def cpu_summary(cpuinfo="/proc/cpuinfo") -> dict:
    """The CPU's model name (lscpu's "Model name") and which of ``CPU_FLAGS`` it has."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = {flag: bool(re.search(rf"\b{flag}\b", text)) for flag in CPU_FLAGS}
    return {"model_name": name.group(1).strip() if name else platform.processor() or "unknown",
            "cores": os.cpu_count(), "flags": flags, "bf16_native": flags["avx512_bf16"] or flags["amx_bf16"]}


def save_equal_width_bart(model_config, tokenizer, positions, directory):
    """A random BART as wide as ``model_config`` (ours), saved with our tokenizer so that the converter builds its
    vocabulary from our word pieces."""
    from transformers import BartConfig, BartForConditionalGeneration

    if len(tokenizer) != model_config.vocab_size:  # the converter takes the BART's vocabulary from the tokenizer
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, the model {model_config.vocab_size}")
    config = BartConfig(
        vocab_size=model_config.vocab_size, d_model=model_config.hidden_size,
        encoder_layers=model_config.num_hidden_layers, decoder_layers=model_config.num_hidden_layers,
        encoder_attention_heads=model_config.num_attention_heads,
        decoder_attention_heads=model_config.num_attention_heads,
        encoder_ffn_dim=model_config.intermediate_size, decoder_ffn_dim=model_config.intermediate_size,
        activation_function="gelu", max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.cls_token_id,
        forced_eos_token_id=None,
        # CTranslate2's BartLoader reads config.normalize_before, which transformers 5's BartConfig does not define
        # (only the config.json of the original BART checkpoints carries it, as an extra key); without it the
        # conversion fails with AttributeError. BART is post-norm.
        normalize_before=False)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(directory)
    # A BERT tokenizer has no bos / eos token, and the converter writes them into CTranslate2's config: without an
    # eos_token there, CTranslate2 would not know our end token. Ours ends on [SEP] and starts from [CLS].
    tokenizer = copy.deepcopy(tokenizer)  # the benchmark's own tokenizer stays as it is
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    tokenizer.save_pretrained(directory)
    return config


def convert_bart(ctranslate2, bart_dir, out_dir):
    """CTranslate2's own conversion of the saved BART, in fp32; the compute type is chosen when loading."""
    ctranslate2.converters.TransformersConverter(bart_dir).convert(out_dir, quantization=None, force=True)
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as handle:
        converted = json.load(handle)
    if (converted.get("eos_token"), converted.get("decoder_start_token")) != ("[SEP]", "[CLS]"):
        raise SystemExit(f"unexpected CTranslate2 config after conversion: {converted}")
    return converted


def check_conversion(bart_dir, ct2, tokenizer, ids):
    """The converted model is the BART: CTranslate2's log-probabilities of a target (here the source's own pieces)
    equal HF's for the saved BART, within fp32 rounding. Returns the largest difference."""
    from transformers import BartForConditionalGeneration

    source, target = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id], ids[:8]
    as_tokens = tokenizer.convert_ids_to_tokens
    converted = ct2.ask("score", "float32", as_tokens(source), as_tokens(target))  # target + [SEP]
    bart = BartForConditionalGeneration.from_pretrained(bart_dir).eval()
    with torch.inference_mode():
        logits = bart(input_ids=torch.tensor([source]),
                      decoder_input_ids=torch.tensor([[tokenizer.cls_token_id, *target]])).logits[0]
    hf = logits.log_softmax(-1)[torch.arange(len(target) + 1), torch.tensor([*target, tokenizer.sep_token_id])]
    difference = max(abs(a - b) for a, b in zip(converted, hf.tolist()))
    if difference > 1e-3:
        raise SystemExit(f"CTranslate2's conversion differs from the BART: log-probabilities {difference:.2g} apart")
    return difference


def ct2_compute_types(ctranslate2, bf16_native) -> list[str]:
    """float32 and int8 always; bfloat16 / int8_bfloat16 where the CPU has bf16 and CTranslate2's CPU build too."""
    supported = ctranslate2.get_supported_compute_types("cpu")
    wanted = ["float32", "int8"] + (["bfloat16", "int8_bfloat16"] if bf16_native else [])
    return [kind for kind in wanted if kind in supported]


def _ct2_reply(translators, vocabulary, message):
    """The worker's answer to one request: ("translate", kind, batch, tokens, beam) runs a batch of id lists as
    token strings, ``[CLS] pieces [SEP]`` as ours encodes; ("score", kind, source, target) gives log-probs."""
    if message[0] == "score":
        _, kind, source, target = message
        return translators[kind].score_batch([source], [target])[0].log_probs
    _, kind, batch, tokens, beam = message
    sources = [["[CLS]", *(vocabulary[i] for i in ids), "[SEP]"] for ids in batch]
    results = translators[kind].translate_batch(sources, beam_size=beam, num_hypotheses=1, max_batch_size=0,
                                                max_decoding_length=tokens, min_decoding_length=tokens)
    for result in results:
        assert len(result.hypotheses[0]) == tokens  # equal work: every hypothesis runs to the fixed length
    return None


def _ct2_worker(connection, ct2_dir, kinds, threads, vocabulary):
    import ctranslate2
    translators = {kind: ctranslate2.Translator(ct2_dir, device="cpu", compute_type=kind, inter_threads=1,
                                                intra_threads=threads) for kind in kinds}
    connection.send("ready")
    for message in iter(connection.recv, ("stop",)):
        try:
            connection.send(_ct2_reply(translators, vocabulary, message))
        except Exception as error:  # noqa: BLE001  (reported in the parent, which stops)
            connection.send(RuntimeError(f"CTranslate2 {message[0]}: {error!r}"))


class Ct2Process:
    """CTranslate2's translators in a process of their own, one request at a time over a pipe (the parent waits,
    asleep, while a batch runs). Why not in our process: measured on the Intel Xeon of docs/speed.md, once
    CTranslate2 has run a batch in a process, torch's decoding in that process stays slower for good (our int8
    decoder at batch 1, beam 5: 6.0 sentences/s before, 2.2 after; nothing spins while idle and the threads'
    affinity is unchanged), which made the first version of this benchmark 1.3-2.7x unfair to us."""

    def __init__(self, ct2_dir, kinds, threads, vocabulary):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of ours has run there
        self.kinds = list(kinds)
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_ct2_worker, args=(child, ct2_dir, self.kinds, threads, vocabulary),
                                       daemon=True)
        self.process.start()
        if self.connection.recv() != "ready":
            raise SystemExit("the CTranslate2 worker did not start")

    def ask(self, *message):
        self.connection.send(message)
        reply = self.connection.recv()
        if isinstance(reply, Exception):
            raise SystemExit(str(reply))
        return reply

    def runner(self, kind, tokens, beam):
        def run(batch, _encoded):
            self.ask("translate", kind, batch, tokens, beam)
        return run

    def close(self):
        self.connection.send(("stop",))
        self.process.join(30)


def cell_runners(systems, ct2, hf, tokenizer, tokens, beam) -> dict:
    """Every system's runner for one (batch, beam) cell; ``hf`` is None where HF does not run."""
    runners = {name: ours_runner(decoder, tokens, beam) for name, decoder in systems.items()}
    for kind in ct2.kinds:
        runners[f"ct2_{kind}"] = ct2.runner(kind, tokens, beam)
    if hf is not None:
        runners["hf_bert2bert"] = hf_runner(hf, hf_generate_kwargs(tokenizer, tokens, beam), tokens)
    return runners


def median_round_speeds(runners, batches, encoded, rounds) -> dict:
    """Sentences/s of each system's median round, and every round's seconds."""
    seconds = timed_turns(runners, batches, encoded, rounds, CPU)
    sentences, per_round = sum(map(len, batches)), len(batches)
    result = {}
    for name, spent in seconds.items():
        round_seconds = [sum(spent[r * per_round:(r + 1) * per_round]) for r in range(rounds)]
        result[name] = {"sentences_per_s": sentences / statistics.median(round_seconds),
                        "round_seconds": round_seconds}
    return result


RATIOS = (("fp32", "ours_fp32", "ct2_float32"), ("int8", "ours_int8", "ct2_int8"),
          ("bf16", "ours_bf16", "ct2_bfloat16"), ("int8_bf16", "ours_int8", "ct2_int8_bfloat16"),
          ("fp32_vs_hf", "ours_fp32", "hf_bert2bert"))


def ratios(speeds) -> dict:
    """ours / theirs at equal precision; ours_bf16 against CTranslate2's fp32 only where it has no bf16."""
    result = {name: speeds[ours] / speeds[theirs] for name, ours, theirs in RATIOS
              if ours in speeds and theirs in speeds}
    if "ours_bf16" in speeds and "ct2_bfloat16" not in speeds and "ct2_float32" in speeds:
        result["bf16_vs_ct2_fp32"] = speeds["ours_bf16"] / speeds["ct2_float32"]
    return result


def format_table(cells) -> str:
    """A markdown table: a row per (batch, beam), sentences/s per system, then the ratios."""
    systems = list(dict.fromkeys(name for cell in cells for name in cell["sentences_per_s"]))
    ratio_names = list(dict.fromkeys(name for cell in cells for name in cell["ratios"]))
    lines = ["| batch | beam | " + " | ".join(systems + [f"{name} ratio" for name in ratio_names]) + " |",
             "|---:|---:|" + "---:|" * (len(systems) + len(ratio_names))]
    for cell in cells:
        speeds = [f"{cell['sentences_per_s'][name]:.2f}" if name in cell["sentences_per_s"] else "–"
                  for name in systems]
        ratio = [f"{cell['ratios'][name]:.2f}x" if name in cell["ratios"] else "–" for name in ratio_names]
        lines.append(f"| {cell['batch']} | {cell['beam']} | " + " | ".join(speeds + ratio) + " |")
    return "\n".join(lines)


def int_list(text):
    return [int(value) for value in text.split(",") if value.strip()]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data", required=True, help="JSONL with src fields (e.g. ../shared/data/squad_qg_du/dev.jsonl)")
    add("--model_dir", default=None, help="base checkpoint of HF bert2bert (and of ours without --model_path); "
                                          "default: the packaged all-MiniLM-L6-v2")
    add("--model_path", default=None, help="a fine-tuned checkpoint for ours (default: the base, pseudo-masked)")
    add("--method", default="pseudo_masked", choices=("pseudo_masked", "masked", "causal"),
        help="how ours decodes the base checkpoint (a fine-tuned --model_path decodes as it was trained): a "
             "pseudo-masked or masked step feeds two tokens per hypothesis, a causal step one")
    add("--sentences", type=int, default=80, help="distinct sources decoded per round (default %(default)s)")
    add("--tokens", type=int, default=32, help="generated tokens per sentence, forced (default %(default)s)")
    add("--batch_sizes", type=int_list, default=[1, 16, 64])
    add("--beams", type=int_list, default=[1, 5])
    add("--hf_batch_sizes", type=int_list, default=[16], help="batch sizes HF bert2bert runs at ('' for none)")
    add("--max_source", type=int, default=128, help="source length in tokens, [CLS] and [SEP] included")
    add("--threads", type=int, default=2, help="threads of every system (default %(default)s)")
    add("--rounds", type=int, default=3, help="passes over the sentences; the median round counts")
    add("--work_dir", default=None, help="where the BART and its conversion go (default: a temporary directory)")
    add("--json", default=None, help="also write the results here")
    return parser.parse_args()


def load_systems(args, cpu):
    """(our decoders by name, tokenizer, HF bert2bert or None): fp32, int8 and, with native bf16, bf16 autocast."""
    ours, int8, tokenizer = load_ours(args.model_path, args.model_dir, args.max_source + args.tokens + 32, CPU,
                                      args.method)
    systems = {"ours_fp32": ours, "ours_int8": int8}
    if cpu["bf16_native"]:
        systems["ours_bf16"] = Seq2SeqDecoder(ours.model, ours.special, ours.method, CPU,
                                              autocast_dtype=torch.bfloat16)
    hf = None
    if args.hf_batch_sizes:
        hf = load_hf_bert2bert(args.model_dir or minilm_dir(), CPU, ours.model.config.vocab_size)
    return systems, tokenizer, hf


def load_translators(ctranslate2, args, model_config, tokenizer, cpu, work_dir, sample_ids):
    """Builds, saves and converts the equal-width BART, starts the CTranslate2 process (one ``Translator`` per
    compute type) and checks the conversion on ``sample_ids`` (a source's pieces); returns (process, shape)."""
    bart_dir, ct2_dir = os.path.join(work_dir, "bart"), os.path.join(work_dir, "ct2")
    bart = save_equal_width_bart(model_config, tokenizer, args.max_source + args.tokens + 2, bart_dir)
    convert_bart(ctranslate2, bart_dir, ct2_dir)
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ct2 = Ct2Process(ct2_dir, ct2_compute_types(ctranslate2, cpu["bf16_native"]), args.threads, vocabulary)
    shape = {key: getattr(bart, key) for key in ("vocab_size", "d_model", "encoder_layers", "decoder_layers",
                                                 "encoder_attention_heads", "encoder_ffn_dim")}
    shape["conversion_max_logprob_difference"] = check_conversion(bart_dir, ct2, tokenizer, sample_ids)
    return ct2, shape


def measure(args, systems, ct2, tokenizer, hf, texts) -> list[dict]:
    """Every (batch, beam) cell, the systems taking turns batch by batch."""
    ids = source_ids(tokenizer, texts, args.max_source)
    cells = []
    for batch_size in args.batch_sizes:
        starts = range(0, len(ids), batch_size)
        batches = [ids[i:i + batch_size] for i in starts]
        encoded = [tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                             max_length=args.max_source) for i in starts]
        for beam in args.beams:
            runners = cell_runners(systems, ct2, hf if batch_size in args.hf_batch_sizes else None,
                                   tokenizer, args.tokens, beam)
            measured = median_round_speeds(runners, batches, encoded, args.rounds)
            speeds = {name: value["sentences_per_s"] for name, value in measured.items()}
            cell = {"batch": batch_size, "beam": beam, "sentences_per_s": speeds, "ratios": ratios(speeds),
                    "round_seconds": {name: value["round_seconds"] for name, value in measured.items()}}
            cells.append(cell)
            print(f"batch {batch_size}, beam {beam}: " + ", ".join(f"{k} {v:.2f}" for k, v in speeds.items())
                  + "; " + ", ".join(f"{k} {v:.2f}x" for k, v in cell["ratios"].items()), flush=True)
    return cells


def main():
    args = parse_args()
    ctranslate2 = import_ctranslate2()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # loading and saving bars would drown the report
    torch.set_num_threads(args.threads)
    cpu = cpu_summary()
    systems, tokenizer, hf = load_systems(args, cpu)
    texts = read_sources(args.data, args.sentences, distinct=True)
    with tempfile.TemporaryDirectory() as scratch:
        ct2, bart = load_translators(ctranslate2, args, systems["ours_fp32"].model.config, tokenizer, cpu,
                                             args.work_dir or scratch, source_ids(tokenizer, texts[:1], 34)[0])
        try:
            report = run_report(args, ctranslate2, cpu, systems, ct2, bart, tokenizer, hf, texts)
        finally:
            ct2.close()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)


def run_report(args, ctranslate2, cpu, systems, ct2, bart, tokenizer, hf, texts) -> dict:
    """Prints the CPU, the versions and the systems, measures every cell, prints the table; returns the report."""
    import transformers
    report = {"command": " ".join(sys.argv), "cpu": cpu, "threads": args.threads,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "ctranslate2": ctranslate2.__version__},
              "ct2_cpu_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
              "model": args.model_path or args.model_dir or minilm_dir(),
              "method": systems["ours_fp32"].method.name, "bart": bart, "sentences": len(texts),
              "tokens": args.tokens, "rounds": args.rounds, "figure": "sentences/s of the median round"}
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in cpu["flags"].items())
    print(f"CPU: {cpu['model_name']} ({cpu['cores']} cores; {flags}); {args.threads} thread(s)\n"
          f"torch {torch.__version__}, transformers {transformers.__version__}, ctranslate2 "
          f"{ctranslate2.__version__} (CPU compute types: {', '.join(report['ct2_cpu_compute_types'])})\n"
          f"ours: {report['model']} ({report['method']}); CTranslate2: BART {bart}; {len(texts)} sentences, "
          f"{args.tokens} tokens forced, "
          f"{args.rounds} round(s), systems: {', '.join(systems)}, "
          f"{', '.join('ct2_' + kind for kind in ct2.kinds)}" + (", hf_bert2bert" if hf else ""), flush=True)
    report["cells"] = measure(args, systems, ct2, tokenizer, hf, texts)
    print(f"\nsentences/s ({report['figure']}), {args.threads} thread(s):\n" + format_table(report["cells"]))
    return report


if __name__ == "__main__":
    main()
