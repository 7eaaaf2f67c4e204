"""Flag values and inputs at the edges: --max_grad_norm <= 0 means no clipping, --fine_tune masked on MASS
full-target pairs always has a label, an out-of-vocabulary --forbid_ignore_word is refused, the decoder asks only
for "src", and the torch minimum is checked at import."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from s2s_ft import training
from test_cli import tiny_bert, train_args, train_file  # noqa: F401  (fixtures)


def weights(out, step):
    return load_file(os.path.join(out, f"ckpt-{step}", "model.safetensors"))


def test_max_grad_norm_zero_or_negative_means_no_clipping(tiny_bert, train_file, tmp_path):  # noqa: F811
    def run(value):
        out = tmp_path / value
        assert training.main(train_args(tiny_bert, train_file, out, "--num_training_steps", "2",
                                        "--max_grad_norm", value)) == 0
        log = [json.loads(line) for line in open(out / "train_log.jsonl")]
        assert all(r["grad_norm"] > 0 for r in log)  # measured (and logged) even without clipping
        return weights(out, 2)

    unclipped = run("1e9")  # a bound the gradient norm never reaches: no clipping
    for value in ("0", "-1"):
        trained = run(value)
        assert all(torch.equal(trained[k], unclipped[k]) for k in unclipped), value


# ---------------------------------------------------------------------------------------------- masked on MASS
def test_masked_chooses_only_predicted_target_tokens():
    """--fine_tune masked on MASS full-target pairs: the corrupted (labelled) tokens are drawn among the predicted
    ones (the fragment), so every example has a label; without flags the draws are those of plain pairs."""
    from mass_objective import MassConfig, mass_pairs
    from conftest import SPECIAL
    from s2s_ft.packing import IGNORE_INDEX, Packer, Pair

    packer = Packer("masked", SPECIAL, target_mask_prob=0.1)
    sentences = [list(range(10, 10 + m)) for m in (2, 5, 9, 14)]
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        pairs = mass_pairs(sentences, SPECIAL, MassConfig(full_target=True), generator)
        batch = packer(pairs, generator)
        for row, pair in enumerate(pairs):
            labels = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
            assert labels, (seed, pair)
            fragment = [t for t, p in zip(pair.target, pair.predicted) if p]
            assert set(labels) <= set(fragment)
    plain = [Pair([10, 11], [20, 21, 22, 23]), Pair([12], [24, 25, 26])]
    flagged = [Pair(p.source, p.target, predicted=[True] * p.num_target_tokens) for p in plain]
    a, b = (Packer("masked", SPECIAL, 0.5)(pairs, torch.Generator().manual_seed(3)) for pairs in (plain, flagged))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="no target token is predicted"):
        packer([Pair([10], [20, 21], close_target=False, predicted=[False, False])])


def test_masked_mass_full_target_training_has_no_nan_step(tmp_path):
    from test_mass import WORDS, mass_args
    from conftest import write_tiny_bert

    (tmp_path / "model").mkdir()
    model_dir = write_tiny_bert(tmp_path / "model", WORDS, weights=False)
    mono = tmp_path / "mono.txt"
    mono.write_text("the cat sat on the mat\na big dog ran on the mat\nthe small red cat sat\n")
    out = tmp_path / "out"
    assert training.main(mass_args(model_dir, str(mono), out, "--fine_tune", "masked", "--mass_full_target",
                                   "--target_mask_prob", "0.1", "--per_device_train_batch_size", "1",
                                   "--num_training_steps", "12", "--max_bad_steps", "12")) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert len(log) == 12 and all(r["loss"] is not None and "skipped_steps" not in r for r in log), log
