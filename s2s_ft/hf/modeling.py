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
the family's ``*ForMaskedLM`` layout, loadable with ``AutoModelForMaskedLM``, plus ``generation_config.json``.
prompts.py holds what a prompt must be, the source-length rule every way in shares, and ``encode`` (sources with
answers); options.py how one ``generate`` call's settings differ from a decoder-only model's and what is refused.
docs/hf.md says which ``generate`` settings give the project's own search, and why ``AutoModelForCausalLM`` must not
be used on these directories.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
from transformers import (BatchEncoding, DynamicCache, GenerationConfig, GenerationMixin, LogitsProcessor,
                          LogitsProcessorList, PreTrainedConfig, PreTrainedModel, RepetitionPenaltyLogitsProcessor)
from transformers.modeling_outputs import CausalLMOutputWithPast

from s2s_ft.data.methods import PADDING_RANKS, SOURCE_RANKS, get_method
from s2s_ft.data.packing import SpecialIds, copyable_columns
from s2s_ft.decoding.search import banned_ngram_mask, feed_inputs
from s2s_ft.hf.options import REFUSED_SETTINGS, CallOptions, refuse_unsupported
from s2s_ft.hf.prompts import (check_answer_inputs, check_prompt_ids, encode_sources, read_prompts,
                               within_source_budget)
from s2s_ft.model import checkpoint
from s2s_ft.model.transformer import ModelConfig, UnifiedTransformer

GENERATION_CONFIG_NAME = "generation_config.json"  # the model's generation settings, as transformers names them


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
    """``DynamicCache`` of the kept tokens, plus per-row source state that beam reordering, sample expansion and batch
    selection move with the rows: the prompt columns the model reads (``source_read``: with answers they follow from
    the prompt's ids, which later steps do not see) and the copy mechanism's copy keys, source ids, copyable mask."""

    copy_state: Optional[tuple] = None
    source_read: Optional[torch.Tensor] = None

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
        if self.source_read is not None:
            self.source_read = fn(self.source_read)


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
    """Ids, positions, segments and ranks of a generation sequence: the source (``source_read`` [B, W]: which of
    the W prompt columns are read, prompts.py ``read_prompts``; the others are padding), then the method's feed for
    steps 0..g (g = tokens generated so far)."""

    def __init__(self, method, special: SpecialIds, source_read: torch.Tensor):
        self.method, self.special = method, special
        self.source_read = source_read
        self.source_length = source_read.sum(1)
        self.source_key_rank = torch.where(source_read, SOURCE_RANKS[0], PADDING_RANKS[0])
        self.source_query_rank = torch.where(source_read, SOURCE_RANKS[1], PADDING_RANKS[1])
        self.source_positions = (source_read.long().cumsum(1) - 1).clamp(min=0)

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


class _PredictingStates:
    """While active (and ``enabled``): the embeddings' and every layer's output at the last column fed, the position
    that predicts the next token ([B, 1, hidden] each; ``collected`` is None when not enabled). The source's and the
    kept tokens' states are not returned: without the copy mechanism the last layer does not compute them."""

    def __init__(self, transformer: UnifiedTransformer, enabled: bool):
        self.modules = (transformer.embeddings, *transformer.layers) if enabled else ()
        self.states, self.handles = [], []

    def __enter__(self) -> "_PredictingStates":
        self.handles = [module.register_forward_hook(lambda _m, _i, output: self.states.append(output[:, -1:]))
                        for module in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    @property
    def collected(self) -> Optional[tuple]:
        return tuple(self.states) if self.modules else None


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
                        device_map=None, attn_implementation: Optional[str] = None,
                        **kwargs) -> "S2sFtForConditionalGeneration":
        """A directory written by s2s-ft training (``s2s_ft_settings.json`` + the family's weights; checkpoints of
        every version of this project), with the generation settings ``save_pretrained`` wrote
        (``generation_config.json``) where there are some. ``dtype``: e.g. torch.bfloat16; ``device_map``: a device
        name; ``attn_implementation``: only "sdpa", the one the model has."""
        if attn_implementation not in (None, "sdpa"):
            raise ValueError(f"attn_implementation={attn_implementation!r}: the model has one attention "
                             f"implementation, PyTorch's scaled_dot_product_attention (\"sdpa\")")
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
        if os.path.isfile(os.path.join(path, GENERATION_CONFIG_NAME)):
            model.generation_config = GenerationConfig.from_pretrained(path, GENERATION_CONFIG_NAME)
        dtype = dtype or torch_dtype
        if dtype is not None:
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if device_map is not None:
            model = model.to(device_map)
        return model.eval()

    def save_pretrained(self, save_directory: str, tokenizer=None, **kwargs) -> None:
        """The family's ``*ForMaskedLM`` layout plus ``s2s_ft_settings.json``, as training writes it, and the
        generation settings (``generation_config.json``, read back by ``from_pretrained``)."""
        settings = self.config.settings
        # first: transformers validates the config before writing it, so a bad one leaves no half-written directory
        self.generation_config.save_pretrained(str(save_directory))
        checkpoint.save_checkpoint(self.transformer, str(save_directory), settings["model_type"],
                                   self.config.family_config, tokenizer, settings)

    def _init_weights(self, module) -> None:
        pass  # UnifiedTransformer initialises itself; loaded weights must not be overwritten

    def get_input_embeddings(self):
        return self.transformer.embeddings.word

    def get_output_embeddings(self):
        return None  # the head is tied inside the transformer; nothing for transformers to tie or resize

    def default_generation_config(self) -> GenerationConfig:
        """The project's search defaults: [SEP] ends (not as the first token), layout tokens are never generated, at
        most the checkpoint's target length. Beam search's defaults (options.BEAM_DEFAULTS: no length normalisation,
        a sentence stops with num_beams finished hypotheses) are filled in by ``generate``: ``transformers`` refuses
        to save a config that sets beam-only flags without beams."""
        sp = self.special
        return GenerationConfig(eos_token_id=sp.sep, pad_token_id=sp.pad,
                                suppress_tokens=sorted({sp.cls, sp.pad, sp.mask} - {sp.sep}),
                                max_new_tokens=int(self.config.settings.get("max_target_seq_length", 48)),
                                min_new_tokens=1, use_cache=True)

    # -- the forward pass -----------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None, cache=None,
                use_cache: Optional[bool] = None, source_width: Optional[int] = None,
                position_ids: Optional[torch.LongTensor] = None, token_type_ids=None,
                answer_mask: Optional[torch.Tensor] = None, output_hidden_states: Optional[bool] = None,
                output_attentions: Optional[bool] = None, **kwargs) -> CausalLMOutputWithPast:
        """Next-token log-probabilities (as ``logits`` [B, 1, V]; log-softmax leaves them unchanged) after a
        generation sequence. Without a cache (or with an empty one) ``input_ids`` is the whole sequence: the
        ``source_width`` prompt columns, then the tokens generated so far (``generate`` passes source_width; it
        defaults to all columns: a prompt alone). With a filled cache it is the last generated token (how many came
        before follows from the cache's length); ``attention_mask``'s first source_width columns mark the prompt's
        real tokens (None: no padding, as ``generate`` passes a mask of ones). A prompt longer than the checkpoint's
        source budget is read as s2s-ft-decode reads it (prompts.py). ``answer_mask`` [B, source_width]: the prompt
        columns of the answer marked in the source (span answer encodings; ``encode`` builds it); without it a
        checkpoint trained with answers reads ``[CLS] sentence [SEP] answer [SEP]`` (the text "sentence [SEP]
        answer") as s2s-ft-decode reads the pair (prompts.py ``read_answer_prompts``; the reading is kept in an
        ``S2sFtCache``). ``output_hidden_states``: the embeddings' and every layer's state [B, 1, hidden] at the
        position that predicts the next token.
        ``position_ids`` of the prompt are checked against the layout's (its real tokens counted from 0, so left
        padding is transparent); ``token_type_ids`` are ignored (segments follow the layout)."""
        if output_attentions:
            raise ValueError(f"output_attentions is not supported: {REFUSED_SETTINGS['output_attentions']}")
        cached = cache is not None and cache.get_seq_length() > 0
        if cached and source_width is None:
            raise ValueError("source_width is needed with a filled cache (generate() passes it)")
        if not cached:
            self._check_sequence(input_ids, attention_mask, source_width, answer_mask)
        width = input_ids.shape[1] if source_width is None else source_width
        if attention_mask is None:  # generate() drops a mask of ones: no padding
            attention_mask = torch.ones(input_ids.shape[0], width, dtype=torch.long, device=input_ids.device)
        mask = attention_mask[:, :width]
        read, answer_mask = self._reading(input_ids[:, :width], mask, answer_mask, cache, cached)
        layout = _Layout(self.method, self.special, read)
        if position_ids is not None and not cached:
            # the read columns before the first real one left out (a cut prompt's closing [SEP] moves, and so do
            # the columns after a window's start)
            compared = read & (mask.bool() & ~read).long().cumsum(1).eq(0)
            if not torch.equal(position_ids[:, :width][compared], layout.source_positions[compared]):
                raise ValueError("position_ids of the prompt must count its real tokens from 0 (the layout the "
                                 "checkpoint was trained with); leave them out to have them computed")
        with _PredictingStates(self.transformer, bool(output_hidden_states)) as states:
            if cached:
                hidden, copy_state = self._step(input_ids, self._generated_count(cache.get_seq_length() - width),
                                                layout, cache)
            else:
                hidden, copy_state = self._full(input_ids, width, layout, cache, answer_mask)
        log_probs = self._log_probs(hidden, copy_state)
        return CausalLMOutputWithPast(logits=log_probs[:, None], cache=cache if use_cache is not False else None,
                                      hidden_states=states.collected)

    @property
    def max_source_length(self) -> Optional[int]:
        """The checkpoint's source budget, ``[CLS] source [SEP]`` included (s2s_ft_settings.json)."""
        length = self.config.settings.get("max_source_seq_length")
        return None if length is None else int(length)

    def _reading(self, prompt_ids, mask: torch.Tensor, answer_mask, cache, cached: bool) -> tuple:
        """(the prompt columns read, the answer's columns or None): prompts.py ``read_prompts`` on the whole prompt,
        kept in an ``S2sFtCache`` for the later steps, which see only the last token; with another cache the plain
        rule on ``mask``, which does not apply to prompts that carry their answer."""
        if not cached:
            read, answer_mask = read_prompts(prompt_ids, mask, answer_mask, self.config.settings, self.special)
            if isinstance(cache, S2sFtCache):
                cache.source_read = read
            return read, answer_mask
        stored = getattr(cache, "source_read", None)
        if stored is not None:
            return stored, answer_mask
        if self.config.settings.get("answer_encoding") and answer_mask is None:
            raise ValueError("an answer-aware checkpoint reads \"sentence [SEP] answer\" prompts from their ids: a "
                             "filled cache must be an S2sFtCache this model filled (generate() makes one)")
        return within_source_budget(mask, self.max_source_length), answer_mask

    def _check_sequence(self, input_ids, attention_mask, source_width: Optional[int], answer_mask) -> None:
        """ValueError (one line) for a whole sequence (no cache) the layout cannot read: its prompt as
        ``check_prompt_ids`` says, the generated columns within the vocabulary, answers as the checkpoint reads them."""
        vocab_size = self.transformer.config.vocab_size
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
            check_prompt_ids(input_ids, attention_mask, vocab_size, self.special)  # says what is wrong
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must match (without a cache)")
        width = input_ids.shape[1] if source_width is None else source_width
        mask = None if attention_mask is None else attention_mask[:, :width]
        check_prompt_ids(input_ids[:, :width], mask, vocab_size, self.special)
        generated = input_ids[:, width:]
        if ((generated < 0) | (generated >= vocab_size)).any():
            raise ValueError(f"input_ids holds a generated id outside the vocabulary (0 to {vocab_size - 1})")
        check_answer_inputs(input_ids[:, :width], mask, answer_mask, self.config.settings, self.special)

    def _full(self, input_ids, width, layout: _Layout, cache, answer_mask=None):
        """The whole sequence at once: the source, the kept columns of the steps before, the current step's feed."""
        generated = input_ids[:, width:]
        target, unkept = layout.steps(generated, 0, generated.shape[1])
        source_types = torch.full_like(input_ids[:, :width], self.special.source_type)
        if answer_mask is not None:  # the answer marked inside the source has a token type of its own
            source_types = source_types.masked_fill(answer_mask.to(source_types.device).bool(),
                                                    self.special.answer_type)
        source = {"input_ids": input_ids[:, :width], "position_ids": layout.source_positions,
                  "token_type_ids": source_types,
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
                                      use_cache=None, answer_mask=None, output_hidden_states=None,
                                      **kwargs) -> dict:
        cached = cache is not None and cache.get_seq_length() > 0
        return {"input_ids": input_ids[:, -1:] if cached else input_ids, "attention_mask": attention_mask,
                "cache": cache, "source_width": source_width, "use_cache": use_cache, "answer_mask": answer_mask,
                "output_hidden_states": output_hidden_states}

    @torch.no_grad()
    def generate(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 generation_config: Optional[GenerationConfig] = None,
                 logits_processor: Optional[LogitsProcessorList] = None, ngram_ignore_ids: Sequence[int] = (),
                 answer_mask: Optional[torch.Tensor] = None, **kwargs):
        """``transformers``' generate over prompts ``[CLS] source [SEP]`` (padded on either side; ``encode`` makes
        them from text, with answers; a checkpoint trained with answers also reads ``[CLS] sentence [SEP] answer
        [SEP]``, the text "sentence [SEP] answer", as s2s-ft-decode reads the pair). The differences from a
        decoder-only model (docs/hf.md): a prompt is read within the checkpoint's source budget as s2s-ft-decode
        reads it; ``no_repeat_ngram_size`` (sparing n-grams with ``ngram_ignore_ids``) and ``repetition_penalty``
        count the generated tokens only; ``max_length`` / ``min_length`` are honoured over the class's default
        new-token limits; beam search defaults to the project's rules (options.py); features that cannot apply are
        refused with a ValueError."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        refuse_unsupported(kwargs, generation_config, self.generation_config)
        if input_ids is None:
            raise ValueError("generate() needs input_ids: the tokenized source, [CLS] source [SEP]")
        check_prompt_ids(input_ids, attention_mask, self.transformer.config.vocab_size, self.special)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        check_answer_inputs(input_ids, attention_mask, answer_mask, self.config.settings, self.special)
        options = CallOptions(kwargs, generation_config, self.generation_config, input_ids.shape[1])
        processors = LogitsProcessorList(logits_processor or [])
        if options.ngram_size:
            processors.append(TargetNoRepeatNGramLogitsProcessor(options.ngram_size, input_ids.shape[1],
                                                                 ngram_ignore_ids))
        if options.repetition_penalty != 1.0:  # the prompt's columns are not counted
            processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty,
                                                               prompt_ignore_length=input_ids.shape[1]))
        model_kwargs = dict(options.kwargs)
        model_kwargs.pop("token_type_ids", None)  # the layout decides segments
        if answer_mask is not None:
            model_kwargs["answer_mask"] = answer_mask
        return super().generate(input_ids=input_ids, attention_mask=attention_mask,
                                generation_config=options.config, logits_processor=processors,
                                source_width=input_ids.shape[1], **model_kwargs)

    def encode(self, tokenizer, sources: Sequence, answers: Optional[Sequence] = None,
               return_tensors: Optional[str] = "pt") -> BatchEncoding:
        """Prompts for ``generate`` from text, left-padded: ``input_ids``, ``attention_mask`` and, for checkpoints
        trained with answers marked in the source, ``answer_mask``; encoded as s2s-ft-decode encodes its input (cut
        to the source budget, each source's answer, text or ``AnswerSource``, shown as the checkpoint was trained to
        see it). ``model.generate(**model.encode(tok, sources, answers))``."""
        return encode_sources(tokenizer, sources, answers, self.config.settings, self.special, return_tensors)


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
