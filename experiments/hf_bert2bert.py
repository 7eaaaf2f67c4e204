"""The HF baseline of the method comparison: ``EncoderDecoderModel`` bert2bert warm-started from one BERT-like
checkpoint (encoder and decoder both initialised from it; the decoder's cross-attention is new and randomly
initialised, as ``from_encoder_decoder_pretrained`` does), trained and decoded as much like our
``run_seq2seq.py`` / ``decode_seq2seq.py`` as the architecture allows.

What is deliberately shared with our trainer, so that only the model differs:

* examples: ``s2s_ft.data.reading.read_pairs`` (same tokenizer call, source truncated so ``[CLS] src [SEP]`` fits
  ``--max_source_len``, target so ``tgt [SEP]`` fits ``--max_target_len``);
* batches: ``s2s_ft.data.batching.micro_batch`` (epoch-wise permutations seeded by (seed, epoch)): at a given seed,
  step k sees exactly the examples our trainer sees at step k; or, with ``--max_tokens_per_batch N``, token-budget
  batches from ``s2s_ft.data.batching.TokenBudgetSampler`` with the same budget as ours. An example's length there is
  ``[CLS] src [SEP]`` + ``tgt [SEP]`` (encoder plus decoder tokens, which is our causal packed length; our masked
  and pseudo-masked layouts are longer, so at the same budget their batches hold fewer examples);
* optimizer and schedule: ``s2s_ft.training.optim.make_optimizer`` (AdamW, no decay on 1-D parameters, linear warmup
  then linear decay to 0), gradient clipping at ``--max_grad_norm``;
* loss: label-smoothed token cross-entropy, fp32 softmax, averaged over the target tokens of the batch (the
  closing ``[SEP]`` included), as ``s2s_ft.training.loss.seq2seq_loss`` does over our predicted tokens;
* ``--precision bf16``: the forward passes (training and ``generate``) under CPU/GPU bf16 autocast, as ours;
* ``--fresh_head_init identity``: the decoder's LM head, when the checkpoint has none (a headless sentence
  encoder such as all-MiniLM-L6-v2; HF then draws it at random), starts as our ``--fresh_head_init identity``
  does: ``cls.predictions.transform.dense`` = I with bias 0, ``transform.LayerNorm`` copied from the last
  layer's ``output.LayerNorm``, output bias 0 (the decoder is tied to the word embeddings).

Decoding: ``generate`` with the same beam size, maximum generated tokens (the closing ``[SEP]`` included, as our
``--max_tgt_length``), ``early_stopping=True`` (a sentence is done when it has ``beam`` finished hypotheses, as
in our beam search), ``[CLS]``/``[PAD]``/``[MASK]`` never generated (our decoder forbids them too), ``--min_len``
as ``min_new_tokens`` (the closing ``[SEP]`` is forbidden until that many tokens, as our ``--min_len``), and the
same detokenisation as ours (``s2s_ft.decoding.detokenize.detokenize`` with ``--detokenize text|spaced|ptb``), so tokenised
metrics see identically formatted text. Length penalty: HF divides by ``len ** alpha``, ours by GNMT's
``((5 + len) / 6) ** alpha``; at alpha = 0 both rank by the plain sum of log-probabilities, at other values (the
SQuAD-QG recipe's 2.0) the two rank long and short hypotheses somewhat differently (not reproducible in
``generate`` without a custom beam scorer).

Resumable: a training state (model, optimizer, scheduler, RNG, step) is saved every ``--save_steps`` to
``OUTPUT_DIR/state.pt`` (atomically) and picked up by a re-run; the finished model goes to ``OUTPUT_DIR/final``
(``save_pretrained``, renamed into place when complete), and a re-run with ``final/`` present does nothing.

    python experiments/hf_bert2bert.py train --model_dir DIR --train_file train.jsonl --output_dir out \\
        --max_source_len 96 --max_target_len 32 --max_tokens_per_batch 2400 --lr 5e-4 --steps 2800 \\
        --warmup_steps 196 --fresh_head_init identity --precision bf16 --seed 1
    python experiments/hf_bert2bert.py decode --model_path out/final --input_file dev.jsonl --output_file dev.pred \\
        --max_source_len 96 --max_target_len 32 --beam_size 5 --length_penalty 2.0 --min_len 6 \\
        --no_repeat_ngram_size 3 --detokenize ptb --precision bf16
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for s2s_ft

from s2s_ft.data.batching import TokenBudgetSampler, micro_batch  # noqa: E402
from s2s_ft.data.reading import iter_jsonl, load_tokenizer, read_pairs, tokenize_sides  # noqa: E402
from s2s_ft.decoding.detokenize import DETOKENIZERS, detokenize  # noqa: E402
from s2s_ft.fileio import write_atomic  # noqa: E402
from s2s_ft.training.optim import make_optimizer  # noqa: E402
from s2s_ft.training.rng import restore_rng, rng_state  # noqa: E402
from s2s_ft.training.rundir import drop_log_records_after  # noqa: E402

FINAL = "final"
STATE = "state.pt"


def device_of(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def set_special_ids(model, tokenizer) -> None:
    """BERT has no BOS/EOS: the decoder starts from [CLS] and ends with [SEP] (our layout's closing token)."""
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.bos_token_id = tokenizer.cls_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.sep_token_id


def autocast(device, precision: str):
    """bf16 autocast for ``--precision bf16`` (a no-op context for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def checkpoint_keys(model_dir: str) -> set:
    """The parameter names stored in a checkpoint directory (safetensors or pytorch_model.bin)."""
    path = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(path):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as handle:
            return set(handle.keys())
    path = os.path.join(model_dir, "pytorch_model.bin")
    if os.path.isfile(path):
        return set(torch.load(path, map_location="cpu", weights_only=True))
    return set()


@torch.no_grad()
def head_as_identity(decoder) -> None:
    """Our ``--fresh_head_init identity`` on HF's ``BertLMHeadModel``: transform = I, bias 0, its LayerNorm
    copied from the last layer's output LayerNorm, output bias 0."""
    head = decoder.cls.predictions
    dense = head.transform.dense
    if dense.weight.shape[0] != dense.weight.shape[1]:
        raise ValueError(f"an identity head needs a square transform, got {tuple(dense.weight.shape)}")
    dense.weight.copy_(torch.eye(dense.weight.shape[0]))
    dense.bias.zero_()
    last = decoder.bert.encoder.layer[-1].output.LayerNorm
    head.transform.LayerNorm.weight.copy_(last.weight)
    head.transform.LayerNorm.bias.copy_(last.bias)
    head.bias.zero_()


def pad_rows(rows, fill: int, device) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([row + [fill] * (width - len(row)) for row in rows], dtype=torch.long, device=device)


# -- training --------------------------------------------------------------------------------------------------
def resume(state_path: str, steps: int, device, model, optimizer, scheduler) -> int:
    """Load the state saved at ``state_path`` (if any) into the model, optimizer, scheduler and RNG; its step."""
    if not os.path.isfile(state_path):
        return 0
    state = torch.load(state_path, map_location=device, weights_only=False)
    if state["steps"] != steps:
        sys.exit(f"{state_path} belongs to a {state['steps']}-step run, not {steps}; use a new --output_dir")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    print(f"resuming from {state_path} at step {state['step']}", flush=True)
    return state["step"]


def warm_started(model_dir: str, fresh_head_init: str, dropout: Optional[float] = None):
    """bert2bert from ``model_dir`` (encoder and decoder), the decoder's LM head started as the identity when
    ``fresh_head_init`` says so and the checkpoint has no head; ``dropout`` (None: the config's) replaces the hidden
    and attention dropout of both stacks, as our --dropout does."""
    from transformers import EncoderDecoderModel

    overrides = {} if dropout is None else {
        f"{side}_{name}": dropout for side in ("encoder", "decoder")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(model_dir, model_dir, **overrides)
    if fresh_head_init == "identity":
        if any(key.startswith(("cls.predictions.transform.", "predictions.transform."))
               for key in checkpoint_keys(model_dir)):
            print("the checkpoint has an LM head: --fresh_head_init does not apply", flush=True)
        else:
            try:
                head_as_identity(model.decoder)
                print("the fresh LM head starts as the identity", flush=True)
            except (AttributeError, ValueError) as error:
                print(f"the fresh LM head keeps its random start: {error}", flush=True)
    return model


def token_budget_sampler(pairs, max_tokens: int, seed: int) -> TokenBudgetSampler:
    """Our token-budget batching over encoder + decoder tokens: ``[CLS] src [SEP]`` + ``tgt [SEP]``."""
    sampler = TokenBudgetSampler([len(p.source) + 2 + len(p.target) + 1 for p in pairs], max_tokens, seed)
    print(f"token-budget batches of <= {max_tokens} tokens: {len(sampler.epoch(0))} per epoch "
          f"({sampler.over_budget} examples over the budget alone)", flush=True)
    return sampler


def train(args) -> None:
    final = os.path.join(args.output_dir, FINAL)
    if os.path.isfile(os.path.join(final, "config.json")):
        print(f"{final} exists: training already finished", flush=True)
        return
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()  # "Some weights ... newly initialized" is expected: the cross-attention
    os.makedirs(args.output_dir, exist_ok=True)
    device = device_of(args.device)
    tokenizer = load_tokenizer(args.model_dir)
    pairs, stats = read_pairs(args.train_file, tokenizer, args.max_source_len, args.max_target_len)
    print(f"{len(pairs)} training pairs ({stats.truncated_sources} sources, {stats.truncated_targets} targets "
          f"truncated)", flush=True)

    torch.manual_seed(args.seed)  # the seed also draws the new cross-attention weights
    random.seed(args.seed)
    model = warm_started(args.model_dir, args.fresh_head_init, args.dropout).to(device)
    set_special_ids(model, tokenizer)
    sampler = token_budget_sampler(pairs, args.max_tokens_per_batch, args.seed) if args.max_tokens_per_batch else None
    optimizer, scheduler = make_optimizer(model, learning_rate=args.lr, weight_decay=args.weight_decay,
                                          adam_epsilon=args.adam_epsilon, num_warmup_steps=args.warmup_steps,
                                          num_training_steps=args.steps)

    state_path = os.path.join(args.output_dir, STATE)
    step = resume(state_path, args.steps, device, model, optimizer, scheduler)
    log_path = os.path.join(args.output_dir, "train_log.jsonl")
    drop_log_records_after(log_path, step)  # steps logged after the state we resume from will be logged again

    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    model.train()
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    while step < args.steps:
        if sampler is not None:
            indices, epoch = sampler(step)
            examples = [pairs[i] for i in indices]
        else:
            examples, epoch = micro_batch(pairs, step, args.batch_size, args.seed)
        input_ids = pad_rows([[cls, *p.source, sep] for p in examples], pad, device)
        # teacher forcing: the decoder reads [CLS] t1 .. tn and predicts t1 .. tn [SEP]
        labels = pad_rows([[*p.target, sep] for p in examples], -100, device)
        decoder_input_ids = pad_rows([[cls, *p.target] for p in examples], pad, device)
        with autocast(device, args.precision):
            logits = model(input_ids=input_ids, attention_mask=(input_ids != pad).long(),
                           decoder_input_ids=decoder_input_ids,
                           decoder_attention_mask=(labels != -100).long()).logits
        predicted = labels != -100
        loss = F.cross_entropy(logits[predicted].float(), labels[predicted], label_smoothing=args.label_smoothing)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss, window_steps = window_loss + loss.item(), window_steps + 1

        if step % args.logging_steps == 0 or step == args.steps:
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "epoch": epoch, "loss": round(window_loss / window_steps, 5),
                      "lr": scheduler.get_last_lr()[0], "grad_norm": round(float(grad_norm), 4),
                      "s_per_step": round(elapsed / window_steps, 4)}
            print(json.dumps(record), flush=True)
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        if step % args.save_steps == 0 and step < args.steps:
            buffer = os.path.join(args.output_dir, STATE + ".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng_state(), "step": step,
                        "steps": args.steps}, buffer)
            os.replace(buffer, state_path)  # a kill leaves the old state or the new one, never half of one

    temporary = final + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    os.replace(temporary, final)  # final/ appears complete or not at all
    if os.path.isfile(state_path):
        os.remove(state_path)  # no longer needed (and ~3x the model's size)
    print(f"saved {final}", flush=True)


# -- decoding --------------------------------------------------------------------------------------------------
@torch.inference_mode()
def decode(args) -> None:
    from transformers import EncoderDecoderModel
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    device = device_of(args.device)
    tokenizer = load_tokenizer(args.model_path)
    model = EncoderDecoderModel.from_pretrained(args.model_path).to(device).eval()
    set_special_ids(model, tokenizer)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id

    sources = [record["src"] for _, record in iter_jsonl(args.input_file)]
    ids = [x[:args.max_source_len - 2] for x in tokenize_sides(tokenizer, sources)]  # as our decoder truncates
    # length-sorted batches (less padding), written back in input order
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    outputs = [""] * len(ids)
    started = time.perf_counter()
    for start in range(0, len(order), args.batch_size):
        chunk = order[start:start + args.batch_size]
        input_ids = pad_rows([[cls, *ids[i], sep] for i in chunk], pad, device)
        with autocast(device, args.precision):
            generated = model.generate(
                input_ids=input_ids, attention_mask=(input_ids != pad).long(), num_beams=args.beam_size,
                max_new_tokens=args.max_target_len, min_new_tokens=args.min_len,
                length_penalty=args.length_penalty,
                early_stopping=True, do_sample=False, no_repeat_ngram_size=args.no_repeat_ngram_size,
                decoder_start_token_id=cls, pad_token_id=pad, eos_token_id=sep,
                suppress_tokens=[cls, pad, tokenizer.mask_token_id])
        for i, row in zip(chunk, generated.tolist()):
            outputs[i] = detokenize(tokenizer, row[1:], args.detokenize)
        print(f"decoded {min(start + args.batch_size, len(order))}/{len(order)} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
    write_atomic(args.output_file, "".join(line.replace("\n", " ") + "\n" for line in outputs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train")
    t.add_argument("--model_dir", required=True, help="the BERT-like checkpoint for both encoder and decoder")
    t.add_argument("--train_file", required=True, help="JSONL with src and tgt")
    t.add_argument("--output_dir", required=True)
    t.add_argument("--max_source_len", type=int, required=True, help="incl. [CLS] and [SEP]")
    t.add_argument("--max_target_len", type=int, required=True, help="incl. the closing [SEP]")
    t.add_argument("--batch_size", type=int, default=16, help="fixed-size batches (without --max_tokens_per_batch)")
    t.add_argument("--max_tokens_per_batch", type=int, default=0,
                   help="token-budget batches (s2s_ft.data.batching.TokenBudgetSampler): rows x longest (encoder + "
                        "decoder tokens) <= N; 0: fixed --batch_size batches")
    t.add_argument("--fresh_head_init", default="random", choices=("random", "identity"),
                   help="how the decoder's LM head starts when the checkpoint has none")
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--warmup_steps", type=int, default=0)
    t.add_argument("--weight_decay", type=float, default=0.01)
    t.add_argument("--adam_epsilon", type=float, default=1e-8)
    t.add_argument("--max_grad_norm", type=float, default=1.0)
    t.add_argument("--label_smoothing", type=float, default=0.1)
    t.add_argument("--dropout", type=float, default=None,
                   help="hidden and attention dropout of encoder and decoder (default: the checkpoint config's)")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--save_steps", type=int, default=500, help="resumable training state every N steps")
    t.add_argument("--logging_steps", type=int, default=50)
    t.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast")
    t.add_argument("--device", default=None)
    d = commands.add_parser("decode")
    d.add_argument("--model_path", required=True, help="a final/ directory written by train")
    d.add_argument("--input_file", required=True, help="JSONL with src")
    d.add_argument("--output_file", required=True, help="one line per input, in input order")
    d.add_argument("--max_source_len", type=int, required=True, help="incl. [CLS] and [SEP], as in training")
    d.add_argument("--max_target_len", type=int, required=True, help="generated tokens incl. the closing [SEP]")
    d.add_argument("--beam_size", type=int, default=1)
    d.add_argument("--length_penalty", type=float, default=0.0)
    d.add_argument("--no_repeat_ngram_size", type=int, default=0)
    d.add_argument("--min_len", type=int, default=1, help="generated tokens before [SEP] is allowed (min_new_tokens)")
    d.add_argument("--detokenize", default="text", choices=DETOKENIZERS, help="as decode_seq2seq.py --detokenize")
    d.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: autocast")
    d.add_argument("--batch_size", type=int, default=32)
    d.add_argument("--device", default=None)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    train(args) if args.command == "train" else decode(args)


if __name__ == "__main__":
    main()
