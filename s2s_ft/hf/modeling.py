"""A fine-tuned checkpoint as a ``transformers`` model: ``generate()``, logits processors, streamers, the
text-generation pipeline and PEFT work on it.

    from s2s_ft.hf import S2sFtForConditionalGeneration
    model = S2sFtForConditionalGeneration.from_pretrained("out/ckpt-2800")
    out = model.generate(**tok("the source", return_tensors="pt"), num_beams=5, max_new_tokens=32)

There is no second model here: the class wraps s2s_ft's ``UnifiedTransformer`` and asks the checkpoint's
fine-tuning method (``methods.FineTuningMethod.step_feed``) which tokens a step feeds, as the project's decoder does.
What this file adds is the translation between the two views of a sequence:

* ``generate`` sees a decoder-only prompt, ``[CLS] source [SEP]`` (padded on either side), then the generated tokens;
* the model sees the source (ranks 0: bidirectional), then per step the method's feed: masked / pseudo-masked
  checkpoints feed the previous token (kept) and a [MASK] that predicts (never kept); causal ones feed the start
  token, then the previous token (kept; it predicts).

Which keys a token may see, positions and segments all follow from (the prompt's attention mask, how many tokens
were generated): the wrapper recomputes them at every call (``_Layout``), so it keeps no state between calls except
the key/value cache, a ``transformers`` ``DynamicCache`` that holds only kept tokens (``S2sFtCache``; with the copy
mechanism it also carries the source's copy keys, reordered with the beams).

Loading and saving go through s2s_ft/model/checkpoint.py (the one place key names are mapped): the directory stays
the family's ``*ForMaskedLM`` layout, loadable with ``AutoModelForMaskedLM``. docs/hf.md says which ``generate``
settings give the project's own search, and why ``AutoModelForCausalLM`` must not be used on these directories.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
from transformers import (DynamicCache, GenerationConfig, GenerationMixin, LogitsProcessor, LogitsProcessorList,
                          PreTrainedConfig, PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast

from s2s_ft.data.methods import PADDING_RANKS, SOURCE_RANKS, get_method
from s2s_ft.data.packing import SpecialIds, copyable_columns
from s2s_ft.decoding.search import banned_ngram_mask, feed_inputs
from s2s_ft.model import checkpoint
from s2s_ft.model.transformer import ModelConfig, UnifiedTransformer


class S2sFtConfig(PreTrainedConfig):
    """The wrapped model's sizes (``model``: ``ModelConfig`` fields), the checkpoint's ``s2s_ft_settings.json``
    (``settings``: method, special ids, lengths) and its family's config.json (``family_config``, written back on
    save). The top-level sizes mirror ``model`` for the ecosystem's tools that read them."""

    model_type = "s2s-ft"
    model: dict | None = None
    settings: dict | None = None
    family_config: dict | None = None
    vocab_size: int = 0
    hidden_size: int = 0
    num_hidden_layers: int = 0
    num_attention_heads: int = 0
    tie_word_embeddings: bool = True
    use_cache: bool = True

    @classmethod
    def from_checkpoint(cls, model_config: ModelConfig, settings: dict, family_config: dict) -> "S2sFtConfig":
        special = settings["special_ids"]
        return cls(model=model_config.to_dict(), settings=dict(settings), family_config=dict(family_config),
                   vocab_size=model_config.vocab_size, hidden_size=model_config.hidden_size,
                   num_hidden_layers=model_config.num_hidden_layers,
                   num_attention_heads=model_config.num_attention_heads,
                   pad_token_id=special["pad"], eos_token_id=special["sep"])


class S2sFtCache(DynamicCache):
    """``DynamicCache`` of the kept tokens, plus the copy mechanism's per-row source state (copy keys, source ids,
    copyable mask), which beam reordering, sample expansion and batch selection move with the rows."""

    copy_state: Optional[tuple] = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_copy_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_copy_state(lambda t: t.repeat_interleave(repeats, 0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_copy_state(lambda t: t[indices])

    def _map_copy_state(self, fn) -> None:
        if self.copy_state is not None:
            self.copy_state = tuple(fn(t) for t in self.copy_state)


class _CacheView:
    """What ``UnifiedTransformer.forward`` asks of a cache (``begin`` / ``layer_kv`` / ``end``, as ``KVCache``),
    over a ``transformers`` Cache that holds only kept tokens: the ranks and positions of the cached keys are handed
    in (recomputed by ``_Layout``), and the tokens fed but not kept (a step's [MASK]) are attended to without being
    stored."""

    def __init__(self, cache, past_key_rank: torch.Tensor, past_positions: torch.Tensor):
        self.cache, self.past_key_rank, self.past_positions = cache, past_key_rank, past_positions
        self.n_store = 0

    def begin(self, key_rank, positions, n_store):
        self.n_store = n_store
        return (self.past_key_rank.shape[1], torch.cat([self.past_key_rank, key_rank], 1),
                torch.cat([self.past_positions, positions], 1))

    def layer_kv(self, layer, k, v):
        kept_k, kept_v = self.cache.update(k[:, :, :self.n_store], v[:, :, :self.n_store], layer)
        return torch.cat([kept_k, k[:, :, self.n_store:]], 2), torch.cat([kept_v, v[:, :, self.n_store:]], 2)

    def end(self):
        pass


class _Layout:
    """Ids, positions, segments and ranks of a generation sequence: the source (``source_mask`` [B, W]: which of
    the W prompt columns are real), then the method's feed for steps 0..g (g = tokens generated so far)."""

    def __init__(self, method, special: SpecialIds, source_mask: torch.Tensor):
        self.method, self.special = method, special
        real = source_mask.bool()
        self.source_length = real.sum(1)
        self.source_key_rank = torch.where(real, SOURCE_RANKS[0], PADDING_RANKS[0])
        self.source_query_rank = torch.where(real, SOURCE_RANKS[1], PADDING_RANKS[1])
        self.source_positions = (real.long().cumsum(1) - 1).clamp(min=0)

    def steps(self, generated: torch.Tensor, first: int, last: int, whole_last: bool = True) -> tuple[dict, int]:
        """Model inputs [B, n] of the columns fed by steps first..last: the kept ones, and all of the last step's
        with ``whole_last``; and how many of those last columns are fed but not kept (a [MASK] that predicts).
        ``generated`` [B, >= last]: the tokens generated so far (column s - 1 is fed as "previous" at step s)."""
        parts, unkept = [], 0
        for step in range(first, last + 1):
            feed, kept = self.method.step_feed(step)
            unkept = len(feed) - kept if whole_last else 0
            fed = feed if step == last and whole_last else feed[:kept]
            if fed:
                previous = generated[:, step - 1] if step else None
                parts.append(feed_inputs(fed, previous, self.source_length, self.special))
        empty = self.source_length.new_zeros(self.source_length.shape[0], 0)
        ids, positions, key_rank, query_rank = ([torch.cat(values, 1) for values in zip(*parts)] if parts
                                                else [empty] * 4)
        return {"input_ids": ids, "position_ids": positions,
                "token_type_ids": torch.full_like(ids, self.special.target_type),
                "key_rank": key_rank, "query_rank": query_rank}, unkept


class S2sFtForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = S2sFtConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: S2sFtConfig, transformer: Optional[UnifiedTransformer] = None):
        super().__init__(config)
        # built from the config when none is given (random weights): from_pretrained hands in the loaded one
        self.transformer = transformer if transformer is not None else UnifiedTransformer(
            ModelConfig.from_dict(config.model))
        self.special = SpecialIds(**config.settings["special_ids"])
        self.method = get_method(config.settings["fine_tune"])
        self.post_init()
        self.generation_config = self.default_generation_config()

    # -- loading and saving: through s2s_ft/model/checkpoint.py ----------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args, dtype=None, torch_dtype=None,
                        device_map=None, **kwargs) -> "S2sFtForConditionalGeneration":
        """A directory written by s2s-ft training (``s2s_ft_settings.json`` + the family's weights; checkpoints of
        every version of this project). ``dtype``: e.g. torch.bfloat16; ``device_map``: a device name."""
        if args or kwargs:
            unknown = list(kwargs) + [repr(a) for a in args]
            raise TypeError(f"S2sFtForConditionalGeneration.from_pretrained: unsupported argument(s) "
                            f"{', '.join(unknown)} (it loads a local s2s-ft checkpoint directory)")
        path = str(pretrained_model_name_or_path)
        transformer, settings = checkpoint.load_finetuned(path)
        with open(os.path.join(path, checkpoint.CONFIG_NAME), encoding="utf-8") as handle:
            family_config = json.load(handle)
        model = cls(S2sFtConfig.from_checkpoint(transformer.config, settings, family_config), transformer)
        model.name_or_path = path
        dtype = dtype or torch_dtype
        if dtype is not None:
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if device_map is not None:
            model = model.to(device_map)
        return model.eval()

    def save_pretrained(self, save_directory: str, tokenizer=None, **kwargs) -> None:
        """The family's ``*ForMaskedLM`` layout plus ``s2s_ft_settings.json``, as training writes it."""
        settings = self.config.settings
        checkpoint.save_checkpoint(self.transformer, str(save_directory), settings["model_type"],
                                   self.config.family_config, tokenizer, settings)

    def _init_weights(self, module) -> None:
        pass  # UnifiedTransformer initialises itself; loaded weights must not be overwritten

    def get_input_embeddings(self):
        return self.transformer.embeddings.word

    def get_output_embeddings(self):
        return None  # the head is tied inside the transformer; nothing for transformers to tie or resize

    def default_generation_config(self) -> GenerationConfig:
        """The project's search defaults: [SEP] ends (not as the first token), layout tokens are never generated, no
        length normalisation,
        a sentence stops with num_beams finished hypotheses (fairseq's and s2s-ft's rule)."""
        sp = self.special
        return GenerationConfig(eos_token_id=sp.sep, pad_token_id=sp.pad, decoder_start_token_id=None,
                                suppress_tokens=sorted({sp.cls, sp.pad, sp.mask} - {sp.sep}),
                                max_new_tokens=int(self.config.settings.get("max_target_seq_length", 48)),
                                min_new_tokens=1,
                                length_penalty=0.0, early_stopping=True, use_cache=True)

    # -- the forward pass -----------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None, cache=None,
                use_cache: Optional[bool] = None, source_width: Optional[int] = None,
                position_ids: Optional[torch.LongTensor] = None, token_type_ids=None,
                **kwargs) -> CausalLMOutputWithPast:
        """Next-token log-probabilities (as ``logits`` [B, 1, V]; log-softmax leaves them unchanged) after a
        generation sequence. Without a cache (or with an empty one) ``input_ids`` is the whole sequence: the
        ``source_width`` prompt columns, then the tokens generated so far (``generate`` passes source_width; it
        defaults to all columns: a prompt alone). With a filled cache it is the last generated token (how many came
        before follows from the cache's length); ``attention_mask``'s first source_width columns mark the prompt's
        real tokens (None: no padding, as ``generate`` passes a mask of ones).
        ``position_ids`` of the prompt are checked against the layout's (its real tokens counted from 0, so left
        padding is transparent); ``token_type_ids`` are ignored (segments follow the layout)."""
        cached = cache is not None and cache.get_seq_length() > 0
        if cached and source_width is None:
            raise ValueError("source_width is needed with a filled cache (generate() passes it)")
        width = input_ids.shape[1] if source_width is None else source_width
        if attention_mask is None:  # generate() drops a mask of ones: no padding
            attention_mask = torch.ones(input_ids.shape[0], width, dtype=torch.long, device=input_ids.device)
        layout = _Layout(self.method, self.special, attention_mask[:, :width])
        if position_ids is not None and not cached:
            real = attention_mask[:, :width].bool()
            if not torch.equal(position_ids[:, :width][real], layout.source_positions[real]):
                raise ValueError("position_ids of the prompt must count its real tokens from 0 (the layout the "
                                 "checkpoint was trained with); leave them out to have them computed")
        if cached:
            hidden, copy_state = self._step(input_ids, self._generated_count(cache.get_seq_length() - width),
                                            layout, cache)
        else:
            hidden, copy_state = self._full(input_ids, width, layout, cache)
        log_probs = self._log_probs(hidden, copy_state)
        return CausalLMOutputWithPast(logits=log_probs[:, None], cache=cache if use_cache is not False else None)

    def _full(self, input_ids, width, layout: _Layout, cache):
        """The whole sequence at once: the source, the kept columns of the steps before, the current step's feed."""
        generated = input_ids[:, width:]
        target, unkept = layout.steps(generated, 0, generated.shape[1])
        source = {"input_ids": input_ids[:, :width], "position_ids": layout.source_positions,
                  "token_type_ids": torch.full_like(input_ids[:, :width], self.special.source_type),
                  "key_rank": layout.source_key_rank, "query_rank": layout.source_query_rank}
        inputs = {name: torch.cat([source[name], target[name]], 1) for name in source}
        view = None
        if cache is not None:
            empty = torch.zeros(input_ids.shape[0], 0, dtype=torch.long, device=input_ids.device)
            view = _CacheView(cache, empty, empty)
        copy = self.transformer.copy is not None
        hidden = self.transformer(**inputs, cache=view, n_store=inputs["input_ids"].shape[1] - unkept,
                                  n_out=None if copy else 1)
        copy_state = None
        if copy:
            copy_state = self._copy_state(hidden[:, :width], input_ids[:, :width], layout.source_key_rank)
            if isinstance(cache, S2sFtCache):
                cache.copy_state = copy_state
        return hidden[:, -1], copy_state

    def _generated_count(self, kept_targets: int) -> int:
        """Tokens generated so far, from how many target columns the cache keeps (each step keeps its method's
        ``step_feed`` share: causal 1 a step, the [MASK] methods 0 at step 0 and 1 after)."""
        step = 0
        while kept_targets > 0 or step == 0:  # a cached call follows a generated token: at least step 1
            kept_targets -= self.method.step_feed(step)[1]
            step += 1
        if kept_targets < 0:
            raise ValueError("the cache does not match this model's fine-tuning method")
        return step

    def _step(self, input_ids, generated_count, layout: _Layout, cache):
        """One cached step: feed step ``generated_count``'s columns (its "previous" is input_ids' last token)."""
        generated = torch.zeros(input_ids.shape[0], generated_count, dtype=torch.long, device=input_ids.device)
        generated[:, -1] = input_ids[:, -1]
        past = layout.steps(generated, 0, generated_count - 1, whole_last=False)[0]
        past_key_rank = torch.cat([layout.source_key_rank, past["key_rank"]], 1)
        past_positions = torch.cat([layout.source_positions, past["position_ids"]], 1)
        inputs, unkept = layout.steps(generated, generated_count, generated_count)
        view = _CacheView(cache, past_key_rank, past_positions)
        hidden = self.transformer(**inputs, cache=view, n_store=inputs["input_ids"].shape[1] - unkept, n_out=1)
        copy_state = getattr(cache, "copy_state", None)
        if self.transformer.copy is not None and copy_state is None:
            raise ValueError("a copy-mechanism model needs an S2sFtCache (generate() makes one)")
        return hidden[:, -1], copy_state

    def _copy_state(self, source_hidden, source_ids, source_key_rank) -> tuple:
        keys = self.transformer.copy.source_keys(source_hidden)
        return keys, source_ids, copyable_columns(source_ids, source_key_rank, self.special)

    def _log_probs(self, hidden, copy_state) -> torch.Tensor:
        if copy_state is None:
            return self.transformer.log_probs(hidden)
        keys, source_ids, copyable = copy_state
        scores = self.transformer.copy.scores(hidden[:, None], keys)[:, 0]
        return self.transformer.log_probs(hidden, scores, source_ids, copyable)

    # -- generation hooks -----------------------------------------------------------------------------------------
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = S2sFtCache()

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, source_width=None,
                                      use_cache=None, **kwargs) -> dict:
        cached = cache is not None and cache.get_seq_length() > 0
        return {"input_ids": input_ids[:, -1:] if cached else input_ids, "attention_mask": attention_mask,
                "cache": cache, "source_width": source_width, "use_cache": use_cache}

    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 generation_config: Optional[GenerationConfig] = None,
                 logits_processor: Optional[LogitsProcessorList] = None, ngram_ignore_ids: Sequence[int] = (),
                 **kwargs):
        """``transformers``' generate over prompts ``[CLS] source [SEP]`` (padded on either side). One difference:
        ``no_repeat_ngram_size`` blocks n-grams of the generated tokens only (the project's rule; transformers' own
        processor would also ban every n-gram of the source), sparing those containing ``ngram_ignore_ids``."""
        if input_ids is None:
            raise ValueError("generate() needs input_ids: the tokenized source, [CLS] source [SEP]")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_prompt(input_ids, attention_mask)
        config = generation_config if generation_config is not None else self.generation_config
        ngram = kwargs.pop("no_repeat_ngram_size", None)
        ngram = ngram if ngram is not None else config.no_repeat_ngram_size
        if generation_config is not None:  # transformers' own processor must not run: a copy without it
            generation_config = GenerationConfig.from_dict({**generation_config.to_dict(), "no_repeat_ngram_size": 0})
        else:
            kwargs["no_repeat_ngram_size"] = 0
        processors = LogitsProcessorList(logits_processor or [])
        if ngram:
            processors.append(TargetNoRepeatNGramLogitsProcessor(ngram, input_ids.shape[1], ngram_ignore_ids))
        kwargs.pop("token_type_ids", None)  # the layout decides segments
        return super().generate(input_ids=input_ids, attention_mask=attention_mask,
                                generation_config=generation_config, logits_processor=processors,
                                source_width=input_ids.shape[1], **kwargs)

    def _check_prompt(self, input_ids, attention_mask) -> None:
        """Each row's real tokens must be ``[CLS] ... [SEP]``: the layout training used (a pipeline tokenizes
        without special tokens unless told: ``add_special_tokens=True``)."""
        real = attention_mask.bool()
        lengths = real.sum(1)
        first = real.long().argmax(1)
        last = first + lengths - 1
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if (lengths < 2).any() or (input_ids[rows, first] != self.special.cls).any() or (
                input_ids[rows, last.clamp(min=0)] != self.special.sep).any() or (
                real.long().cumsum(1).gather(1, last[:, None].clamp(min=0))[:, 0] != lengths).any():
            raise ValueError("each prompt must be [CLS] source [SEP] with padding only outside it (tokenize with "
                             "add_special_tokens=True; a pipeline needs add_special_tokens=True too)")


class TargetNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """No n-gram twice among the *generated* tokens (the prompt's ``prompt_width`` columns are not counted), except
    n-grams containing an ``ignore_ids`` token: the project's ``--forbid_duplicate_ngrams`` rule, through the same
    ``banned_ngram_mask``."""

    def __init__(self, ngram_size: int, prompt_width: int, ignore_ids: Sequence[int] = ()):
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.ngram_size, self.prompt_width, self.ignore_ids = ngram_size, prompt_width, list(ignore_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ignore = torch.tensor(self.ignore_ids, dtype=torch.long, device=input_ids.device)
        banned = banned_ngram_mask(input_ids[:, self.prompt_width:], scores.shape[-1], self.ngram_size, ignore)
        return scores.masked_fill(banned, float("-inf"))


def from_pretrained_with_adapter(base_dir: str, adapter_dir: str):
    """A LoRA run's result as a peft model: ``base_dir`` (its ``lora_base/``) with the adapter folder
    ``adapter_dir`` (``ckpt-N/adapter``): the parts trained in full are loaded into the base, the adapters by peft.
    ``generate`` works on it as on the merged checkpoint."""
    from peft import PeftModel
    from safetensors.torch import load_file

    model = S2sFtForConditionalGeneration.from_pretrained(base_dir)
    trained = load_file(os.path.join(adapter_dir, checkpoint.TRAINED_IN_FULL_NAME))
    unexpected = model.load_state_dict(trained, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{adapter_dir}: {len(unexpected)} weights the base {base_dir} does not have, e.g. "
                         f"{unexpected[0]}")
    return PeftModel.from_pretrained(model, adapter_dir).eval()
