"""Late dropout (--dropout_from_step N): no dropout before optimizer step N, the configured rate from it on.
Checked against runs that never had dropout (--dropout 0) and against an uninterrupted run when resumed."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import one_error_line, train_args
from safetensors.torch import load_file

from s2s_ft.cli import train
from s2s_ft.model.transformer import ModelConfig, UnifiedTransformer


def test_set_dropout_switches_every_dropout_and_keeps_the_config():
    config = ModelConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.3,
                         attention_probs_dropout_prob=0.2)
    torch.manual_seed(0)
    model = UnifiedTransformer(config)
    ids = torch.randint(5, 40, (2, 10))
    positions, segments = torch.arange(10).expand(2, 10), torch.zeros(2, 10, dtype=torch.long)
    ranks = torch.zeros(2, 10, dtype=torch.long)  # one bidirectional block: every token sees every token
    with torch.no_grad():
        reference = model.eval()(ids, positions, segments, ranks, ranks)  # eval mode: no dropout at all
        model.train()
        model.set_dropout(False)
        assert torch.equal(model(ids, positions, segments, ranks, ranks), reference)
        model.set_dropout(True)
        assert not torch.allclose(model(ids, positions, segments, ranks, ranks), reference)
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.3, 0.2)
    rates = {type(m).__name__: getattr(m, "p", getattr(m, "dropout_p", None)) for m in model.modules()
             if isinstance(m, torch.nn.Dropout) or hasattr(m, "dropout_p")}
    assert rates == {"Dropout": 0.3, "SelfAttention": 0.2}


def train_run(tiny_bert, train_file, out, steps, *extra):
    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", str(steps), "--save_steps", "1",
                                 "--save_total_limit", str(steps), *extra)) == 0
    return out


def weights(out, step) -> dict:
    return load_file(os.path.join(out, f"ckpt-{step}", "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def late(tiny_bert, train_file, tmp_path_factory):
    """4 steps, dropout (the tiny BERT's 0.1) from step 2 on; every step saved."""
    return train_run(tiny_bert, train_file, tmp_path_factory.mktemp("late") / "run", 4, "--dropout_from_step", "2")


def test_steps_before_the_switch_equal_a_run_without_dropout(late, tiny_bert, train_file, tmp_path):
    without = train_run(tiny_bert, train_file, tmp_path / "without", 4, "--dropout", "0")
    assert same(weights(late, 1), weights(without, 1)) and same(weights(late, 2), weights(without, 2))
    assert not same(weights(late, 3), weights(without, 3))  # step 3 ran with dropout
    always = train_run(tiny_bert, train_file, tmp_path / "always", 1)
    assert not same(weights(always, 1), weights(without, 1))  # the tiny BERT's own dropout is on by default


@pytest.mark.parametrize("resume_at", [1, 3], ids=["resumed-before-the-switch", "resumed-after-the-switch"])
def test_a_resumed_run_ends_where_the_uninterrupted_one_did(late, tiny_bert, train_file, tmp_path, resume_at):
    copy = tmp_path / "run"
    shutil.copytree(late, copy)
    for step in range(resume_at + 1, 5):
        shutil.rmtree(copy / f"ckpt-{step}")
    train_run(tiny_bert, train_file, copy, 4, "--dropout_from_step", "2")
    assert same(weights(copy, 4), weights(late, 4))


def test_changing_it_within_a_run_is_refused(late, tiny_bert, train_file, capsys):
    assert train.main(train_args(tiny_bert, train_file, late, "--num_training_steps", "5", "--save_steps", "1",
                                 "--dropout_from_step", "3")) != 0
    assert "--dropout_from_step 2 → 3" in one_error_line(capsys)


def test_a_negative_step_is_a_usage_error(tiny_bert, train_file, tmp_path, capsys):
    assert train.main(train_args(tiny_bert, train_file, tmp_path / "bad", "--num_training_steps", "1",
                                 "--dropout_from_step", "-1")) != 0
    assert "--dropout_from_step must be >= 0" in one_error_line(capsys)
