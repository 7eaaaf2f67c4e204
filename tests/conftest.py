"""Shared fixtures (tiny models, a tiny BERT checkpoint and training file), helpers for the command-line tests, and
an independent description of the packed layout.

Nothing here reads the ranks the packer produces: token roles are derived from the pair lengths alone, so the
tests compare the code against a reference written from the documented layout, not against itself.

Tests that start subprocesses (the scripts, torchrun, crash and kill tests) are marked ``slow``; the suite runs them
(``pytest -m "not slow"`` leaves them out locally).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import s2s_ft without installing it

from s2s_ft.cli import train
from s2s_ft.data.answers import uses_span
from s2s_ft.data.packing import Pair, SpecialIds
from s2s_ft.data.reading import load_tokenizer, special_ids  # noqa: E402
from s2s_ft.model import checkpoint
from s2s_ft.model.transformer import ModelConfig, UnifiedTransformer


def load_script(folder: str, name: str):
    """A repository script that is not a package module (``benchmarks/roofline.py``, ``experiments/...``)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SPECIAL = SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=50, source_type=0, target_type=1)

# Hand-made pairs with small ids (4..49, so they never collide with the special ids).
PAIRS = [
    Pair(source=[10, 11, 12], target=[20, 21, 22, 23]),
    Pair(source=[13, 14, 15, 16, 17, 18], target=[24, 25]),
    Pair(source=[19], target=[26, 27, 28]),
]


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest (and are immune to oversubscription on a busy box) on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(rel_pos: bool = False, **overrides) -> ModelConfig:
    values = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if rel_pos:
        values.update(rel_pos_bins=32, max_rel_pos=128)
    values.update(overrides)
    return ModelConfig(**values)


def make_model(rel_pos: bool = False, seed: int = 0, **overrides) -> UnifiedTransformer:
    torch.manual_seed(seed)
    model = UnifiedTransformer(tiny_config(rel_pos, **overrides)).float().eval()
    # The default init (std 0.02) makes every position look alike; larger weights make dependence visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        if model.rel_pos_bias is not None:
            model.rel_pos_bias.weight.normal_(0.0, 1.0)
    return model


@pytest.fixture(params=[False, True], ids=["abs-pos", "rel-pos"])
def tiny_model(request) -> UnifiedTransformer:
    return make_model(rel_pos=request.param)


# -- independent layout reference ------------------------------------------------------------------------------
def roles_of(pair: Pair, method: str, width: int) -> list[tuple[str, int]]:
    """Role of each column of one packed row, from the lengths alone: ('src', j), ('tgt', i), ('pseudo', i), ('pad', 0)."""
    n_src = len(pair.source) + 2
    m = len(pair.target) + 1
    roles = [("src", j) for j in range(n_src)] + [("tgt", i) for i in range(m)]
    if method == "pseudo_masked":
        roles += [("pseudo", i) for i in range(m)]
    assert len(roles) <= width
    return roles + [("pad", 0)] * (width - len(roles))


def may_attend(query: tuple[str, int], key: tuple[str, int], same_token: bool) -> bool:
    """The seq2seq attention rule written from the roles (independent of the rank encoding)."""
    if same_token:
        return True
    q_kind, q_i = query
    k_kind, k_i = key
    if q_kind == "pad" or k_kind in ("pad", "pseudo"):
        return False
    if k_kind == "src":
        return True  # source, real targets and pseudo tokens all read the whole source
    # key is real target k_i
    if q_kind == "src":
        return False
    if q_kind == "tgt":
        return k_i <= q_i
    return k_i < q_i  # pseudo q_i: real targets before it


def allowed_matrix(pairs, method: str, width: int) -> torch.Tensor:
    """[B, 1, L, L] boolean reference mask."""
    rows = []
    for pair in pairs:
        roles = roles_of(pair, method, width)
        rows.append([[may_attend(roles[q], roles[k], q == k) for k in range(width)] for q in range(width)])
    return torch.tensor(rows, dtype=torch.bool)[:, None]


def closure(allowed: torch.Tensor) -> torch.Tensor:
    """Transitive, reflexive closure of a [L, L] 'q reads k' relation (what a deep stack can depend on)."""
    reach = allowed.clone() | torch.eye(allowed.shape[0], dtype=torch.bool)
    while True:
        nxt = reach | ((reach.float() @ reach.float()) > 0)
        if torch.equal(nxt, reach):
            return reach
        reach = nxt


def t5_bucket(rel: int, num_buckets: int, max_distance: int) -> int:
    """Scalar transcription of T5's bidirectional relative_position_bucket (as used by UniLMv2)."""
    num_buckets //= 2
    ret = num_buckets if rel > 0 else 0
    n = abs(rel)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


def write_tiny_bert(directory, words, weights: bool = True, **config_overrides) -> str:
    """A 2-layer BERT checkpoint dir with a WordPiece tokenizer over ``words`` (config only when ``weights`` is
    False, for runs that start from scratch); ``config_overrides`` go to BertConfig (e.g. dropout 0)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, **config_overrides)
    if weights:
        torch.manual_seed(0)
        BertForMaskedLM(config).save_pretrained(directory)
    else:
        config.save_pretrained(directory)
    return str(directory)


# -- the tiny BERT checkpoint and training data of the command-line tests ---------------------------------------
WORDS = ("the a cat dog sat ran on mat big small red blue who what where is was did ? . "
         "house tree bird fish").split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), WORDS)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    pairs = [("the cat sat on the mat", "who sat on the mat ?"), ("a dog ran", "what ran ?"),
             ("the big red bird", "what is red ?"), ("a small fish", "what is small ?"),
             ("the tree is blue", "what is blue ?"), ("a house", "where is the house ?")]
    with open(path, "w") as handle:
        for src, tgt in pairs:
            handle.write(json.dumps({"src": src, "tgt": tgt}) + "\n")
        handle.write(json.dumps({"src": ["the", "dog"], "tgt": ["who", "?"]}) + "\n")  # pre-tokenised pieces
    return str(path)


def trained_checkpoint(tiny_bert, train_file, tmp_path_factory, steps: int) -> str:
    """Fine-tune the tiny BERT for ``steps`` steps; returns the final checkpoint directory."""
    out = tmp_path_factory.mktemp("trained")
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", str(steps), "--save_steps",
                                 str(steps))) == 0
    return str(out / f"ckpt-{steps}")


def randomize_matrices(model, seed: int) -> None:
    """Every weight matrix (embeddings included) drawn from N(0, 0.3): larger than BERT's init, so that outputs differ
    between sources and hypotheses end early and at different lengths."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)


def random_weights_checkpoint(tmp_path_factory, max_source_seq_length: int, words=WORDS) -> str:
    """A fine-tuned-style checkpoint with random weights larger than BERT's init (std 0.3), so that outputs differ
    between sources and hypotheses end early and at different lengths (finished sentences leave the batch)."""
    base = write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), words)
    model, info = checkpoint.load_pretrained("bert", base)
    randomize_matrices(model, 3)
    tokenizer = load_tokenizer(base)
    special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", info["hf_config"]))
    out = tmp_path_factory.mktemp("ckpt") / "ckpt-0"
    checkpoint.save_checkpoint(model, str(out), "bert", info["hf_config"], tokenizer, {
        "fine_tune": "pseudo_masked", "max_source_seq_length": max_source_seq_length, "max_target_seq_length": 8,
        "special_ids": asdict(special)})
    return str(out)


def train_args(model_dir, train_file, output_dir, *extra):
    return ["--model_type", "bert", "--model_name_or_path", model_dir, "--train_file", train_file,
            "--output_dir", str(output_dir), "--max_source_seq_length", "12", "--max_target_seq_length", "8",
            "--per_device_train_batch_size", "3", "--learning_rate", "3e-3", "--logging_steps", "1"] + list(extra)


def assert_cache_matches_recomputation(decoder, sources, config) -> None:
    """The cached decoder and the reference path that recomputes every step give the same hypotheses."""
    cached = decoder.generate(sources, config)
    config.use_cache = False
    recomputed = decoder.generate(sources, config)
    assert [[h.tokens for h in hyps] for hyps in cached] == [[h.tokens for h in hyps] for hyps in recomputed]
    for a, b in zip(cached, recomputed):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def one_error_line(capsys) -> str:
    """The one ``error: ...`` line a tool printed (and no traceback)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# -- torchrun --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, args, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node NPROC ROOT/SCRIPT ARGS`` on CPU (gloo), one thread per
    rank; asserts success."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def torchrun(args, nproc: int = 2) -> subprocess.CompletedProcess:
    """``run_seq2seq.py ARGS`` on NPROC CPU ranks."""
    return launch("run_seq2seq.py", ["--no_cuda", *args], nproc)


def make_answer_checkpoint(directory, encoding: str, method: str, copy: bool) -> str:
    """Random weights (std 0.3, the answer type's row too) saved as a checkpoint trained with ``encoding``; a source
    budget of 16 cuts the last row around its answer."""
    (directory / "base").mkdir()
    base = write_tiny_bert(directory / "base", WORDS)
    model, info = checkpoint.load_pretrained("bert", base, copy_mechanism=copy, answer_type=uses_span(encoding))
    randomize_matrices(model, 21)
    tokenizer = load_tokenizer(base)
    hf_config = info["hf_config"]
    special = special_ids(tokenizer, *checkpoint.default_segment_ids("bert", hf_config),
                          checkpoint.answer_segment_id(hf_config))
    with torch.no_grad():
        model.head.bias[special.sep] += 2.0
    out = directory / "ckpt"
    checkpoint.save_checkpoint(model, str(out), "bert", hf_config, tokenizer, {
        "fine_tune": method, "max_source_seq_length": 16, "max_target_seq_length": 10,
        "special_ids": asdict(special), "answer_encoding": encoding})
    return str(out)
