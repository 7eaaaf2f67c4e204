"""UnifiedTransformer.gradient_checkpointing: the same loss and gradients as a plain backward pass, with the layers
really recomputed in training and left alone in eval mode."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import PAIRS, SPECIAL, make_model

from s2s_ft.data.packing import Packer
from s2s_ft.model.transformer import TransformerLayer
from s2s_ft.training.loss import seq2seq_loss

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def layer_calls(monkeypatch) -> list:
    """One entry per TransformerLayer.forward run (module hooks do not see checkpoint's recomputation)."""
    calls, forward = [], TransformerLayer.forward

    def counted(self, *args):
        calls.append(1)
        return forward(self, *args)

    monkeypatch.setattr(TransformerLayer, "forward", counted)
    return calls


def loss_and_grads(model, batch, checkpointing: bool, calls: list):
    model.gradient_checkpointing = checkpointing
    model.zero_grad(set_to_none=True)
    calls.clear()
    torch.manual_seed(7)  # the same dropout draws in both runs
    loss = seq2seq_loss(model, model(**batch.model_inputs()), batch.labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}, len(calls)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("rel_pos", [False, True], ids=["abs-pos", "rel-pos"])
def test_checkpointing_gives_the_same_loss_and_gradients(rel_pos, dropout, layer_calls):
    model = make_model(rel_pos=rel_pos, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout).train()
    batch = Packer("pseudo_masked", SPECIAL)(PAIRS, torch.Generator().manual_seed(0))
    loss, grads, calls = loss_and_grads(model, batch, False, layer_calls)
    loss_ckpt, grads_ckpt, calls_ckpt = loss_and_grads(model, batch, True, layer_calls)
    layers = len(model.layers)
    assert (calls, calls_ckpt) == (layers, 2 * layers)  # every layer ran again in the backward pass
    assert torch.allclose(loss, loss_ckpt, rtol=0, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], rtol=0, atol=1e-6), name


def test_checkpointing_is_off_in_eval_mode(layer_calls):
    model = make_model()  # eval mode
    model.gradient_checkpointing = True
    batch = Packer("causal", SPECIAL)(PAIRS, torch.Generator().manual_seed(0))
    model(**batch.model_inputs()).sum().backward()
    assert len(layer_calls) == len(model.layers)


# -- the training flags --------------------------------------------------------------------------------------------
def _trained_weights(tiny_bert, train_file, out, *flags):
    from conftest import train_args
    from safetensors.torch import load_file

    from s2s_ft.cli import train

    assert train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "3", "--save_steps", "3",
                                 *flags)) == 0
    return load_file(str(out / "ckpt-3" / "model.safetensors"))


def test_gradient_checkpointing_flag_trains_the_same_weights(tiny_bert, train_file, tmp_path):
    plain = _trained_weights(tiny_bert, train_file, tmp_path / "plain")
    recomputed = _trained_weights(tiny_bert, train_file, tmp_path / "ckpt", "--gradient_checkpointing")
    assert plain.keys() == recomputed.keys()
    for key in plain:  # dropout on: the recomputation replays the same dropout draws
        torch.testing.assert_close(recomputed[key], plain[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("S2S_FT_SLOW_TESTS"),
                    reason="torch.compile takes minutes on a small CPU; set S2S_FT_SLOW_TESTS=1 to run it")
def test_torch_compile_flag_trains_the_same_weights(train_file, tmp_path):
    from conftest import WORDS, write_tiny_bert

    # compiled dropout draws from inductor's own RNG stream, so only a dropout-free model can match eagerly
    (tmp_path / "nodrop").mkdir()
    model_dir = write_tiny_bert(tmp_path / "nodrop", WORDS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    plain = _trained_weights(model_dir, train_file, tmp_path / "plain")
    compiled = _trained_weights(model_dir, train_file, tmp_path / "compiled", "--torch_compile")
    for key in plain:  # compiled kernels fuse and reorder floating-point work: close, not bit-identical
        torch.testing.assert_close(compiled[key], plain[key], rtol=1e-4, atol=1e-5)
