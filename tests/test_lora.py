"""LoRA through peft (``--lora_rank``, issue 26): only the adapters and the fresh parts train; the saved checkpoint is
the merged model (any decoder reads it); the adapter folder loads into the HF class with peft and generates what the
merged checkpoint generates; a killed LoRA run resumes exactly."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import train_args
from safetensors.torch import load_file

from s2s_ft.cli import train
from s2s_ft.data.reading import load_tokenizer
from s2s_ft.hf import S2sFtForConditionalGeneration, from_pretrained_with_adapter

pytest.importorskip("peft")


def lora_run(tiny_bert, train_file, out, steps, *extra):
    return train.main(train_args(tiny_bert, train_file, out, "--num_training_steps", str(steps), "--save_steps", "10",
                                 "--lora_rank", "4", "--copy_mechanism", *extra))


@pytest.fixture(scope="module")
def lora_out(tiny_bert, train_file, tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("lora")
    assert lora_run(tiny_bert, train_file, out, 20) == 0
    return out


def test_only_adapters_and_fresh_parts_change(lora_out):
    base = load_file(str(lora_out / "lora_base" / "model.safetensors"))
    adapter = load_file(str(lora_out / "ckpt-20" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    config = json.loads((lora_out / "ckpt-20" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    merged = load_file(str(lora_out / "ckpt-20" / "model.safetensors"))
    assert merged.keys() == base.keys()  # an ordinary checkpoint: the same keys as without LoRA
    # frozen: embeddings and LayerNorms of the body; changed: the linear layers (merged adapters)
    assert torch.equal(merged["bert.embeddings.word_embeddings.weight"], base["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(merged["bert.encoder.layer.0.output.LayerNorm.weight"],
                       base["bert.encoder.layer.0.output.LayerNorm.weight"])
    assert not torch.equal(merged["bert.encoder.layer.0.attention.self.query.weight"],
                           base["bert.encoder.layer.0.attention.self.query.weight"])


def test_adapter_loads_with_peft_and_generates_like_the_merged_checkpoint(lora_out, single_thread):
    tokenizer = load_tokenizer(str(lora_out / "ckpt-20"))
    peft_model = from_pretrained_with_adapter(str(lora_out / "lora_base"), str(lora_out / "ckpt-20" / "adapter"))
    merged = S2sFtForConditionalGeneration.from_pretrained(str(lora_out / "ckpt-20"))
    tokenizer.padding_side = "left"
    batch = tokenizer(["the cat sat on the mat", "a dog ran", "a house"], return_tensors="pt", padding=True)
    out_peft = peft_model.generate(**batch, num_beams=3, max_new_tokens=8, output_scores=True,
                                   return_dict_in_generate=True)
    out_merged = merged.generate(**batch, num_beams=3, max_new_tokens=8, output_scores=True,
                                 return_dict_in_generate=True)
    assert torch.equal(out_peft.sequences, out_merged.sequences)
    assert torch.allclose(out_peft.sequences_scores, out_merged.sequences_scores, atol=1e-4)


def test_a_resumed_lora_run_equals_a_straight_one(tiny_bert, train_file, lora_out, tmp_path, single_thread):
    import shutil

    shutil.copytree(lora_out, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "ckpt-20")  # as if killed after step 10's checkpoint
    assert lora_run(tiny_bert, train_file, tmp_path / "run", 20) == 0  # resumes from ckpt-10
    assert json.loads((tmp_path / "run" / "invocations.jsonl").read_text().splitlines()[-1])["resumed_from"]
    straight = load_file(str(lora_out / "ckpt-20" / "model.safetensors"))
    again = load_file(str(tmp_path / "run" / "ckpt-20" / "model.safetensors"))
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    # and the base was not rewritten from the resumed (adapted) model
    assert torch.equal(load_file(str(lora_out / "lora_base" / "model.safetensors"))[
        "bert.encoder.layer.0.attention.self.query.weight"], load_file(str(
            tmp_path / "run" / "lora_base" / "model.safetensors"))["bert.encoder.layer.0.attention.self.query.weight"])
