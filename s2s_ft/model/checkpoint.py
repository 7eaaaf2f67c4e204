"""Checkpoint I/O: the one place where checkpoint key names are mapped to ``UnifiedTransformer`` names.

Reading: a Hugging Face checkpoint directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) of
one of the supported families, or a UniLM release checkpoint (BERT keys, optionally fused ``qkv_linear`` attention
and a relative position bias). Writing: the family's ``*ForMaskedLM`` layout, so a fine-tuned checkpoint can be
opened with ``transformers.AutoModelForMaskedLM`` as well as with :func:`load_finetuned`.

How the mapping works, top to bottom:

* ``_BODY`` / ``_LAYER`` name the encoder modules once, relative to the family's body prefix (``bert.``,
  ``roberta.``, ``electra.``); each ``Family`` adds its MLM-head names and the keys it ties or ignores.
* The UniLM fused attention format is first rewritten into the ordinary BERT q/k/v keys (``_unfuse_unilm``), so
  the generic code only ever sees one layout.
* ``_key_map`` expands the tables for a model: our parameter name -> the HF key(s) it is made of. Several keys
  mean concatenation along dim 0 (our fused ``qkv`` = query; key; value); saving splits them again.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from s2s_ft.model.transformer import ModelConfig, UnifiedTransformer

MODEL_TYPES = ("bert", "minilm", "roberta", "xlm-roberta", "electra", "unilm")

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
SETTINGS_NAME = "s2s_ft_settings.json"
# A LoRA run's adapter folder (s2s_ft/training/lora.py): peft's two files plus the parts trained in full.
TRAINED_IN_FULL_NAME = "trained_in_full.safetensors"

_LOG = logging.getLogger("s2s_ft.model.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint (or config) that cannot be used; the message names the path and what was expected."""


# --------------------------------------------------------------------------------------------------------------
# Name tables. Module pairs (ours, HF); ``.weight`` / ``.bias`` are appended to both sides by the generic code.
# --------------------------------------------------------------------------------------------------------------
# Relative to the body prefix.
_BODY = (
    ("embeddings.word", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.token_type", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    ("embeddings.project", "embeddings_project"),  # ELECTRA only (embedding_size != hidden_size)
    ("rel_pos_bias", "rel_pos_bias"),  # UniLM only: one [heads x bins] table shared by all layers
)
# Relative to ``{prefix}encoder.layer.{i}.`` and ``layers.{i}.``.
_LAYER = (
    ("attention.out", "attention.output.dense"),
    ("attention_norm", "attention.output.LayerNorm"),
    ("ffn_in", "intermediate.dense"),
    ("ffn_out", "output.dense"),
    ("ffn_norm", "output.LayerNorm"),
)
# Our fused projection is these three, concatenated along the output dimension in this order.
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


@dataclass(frozen=True)
class Family:
    name: str  # key layout: bert | roberta | electra | unilm
    hf_model_type: str  # ``model_type`` written to config.json
    architecture: str  # the *ForMaskedLM class whose key names we save
    config_class: str  # transformers config class used to read config.json (it supplies the family defaults)
    prefixes: tuple  # accepted body prefixes; the first is the *ForMaskedLM one (the others: headless *Model saves)
    head: tuple  # (our name, full HF key) module pairs of the MLM head
    tied: tuple  # HF keys that are copies of other weights: not saved (as HF does), ignored on load
    ignored: tuple  # HF key prefixes with no counterpart here ("{p}" = body prefix): skipped with an info log
    config_types: tuple  # config.json model_types that belong to this family
    position_offset_from_pad: bool = False  # RoBERTa: position row = position + pad_token_id + 1
    head_act_is_gelu: bool = False  # HF hard-codes gelu in this family's MLM head (not config.hidden_act)
    unilm: bool = False  # fused qkv_linear attention and relative position bias allowed
    aliases: dict = field(default_factory=dict)  # HF key -> older spelling accepted on load


_BERT_HEAD = (("head.transform", "cls.predictions.transform.dense"),
              ("head.norm", "cls.predictions.transform.LayerNorm"),
              ("head.bias", "cls.predictions.bias"))
_BERT_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_BERT_IGNORED = ("{p}pooler.", "cls.seq_relationship.")
_BERT_TYPES = ("bert", "minilm", "unilm")
_ROBERTA_HEAD = (("head.transform", "lm_head.dense"), ("head.norm", "lm_head.layer_norm"),
                 ("head.bias", "lm_head.bias"))
_ROBERTA_TIED = ("lm_head.decoder.weight", "lm_head.decoder.bias")


def _bert_like(name: str, unilm: bool = False) -> Family:
    return Family(name, "bert", "BertForMaskedLM", "BertConfig", ("bert.", ""), _BERT_HEAD, _BERT_TIED, _BERT_IGNORED,
                  _BERT_TYPES, unilm=unilm, aliases={"cls.predictions.bias": "cls.predictions.decoder.bias"})


def _roberta_like(hf_model_type: str, architecture: str, config_class: str) -> Family:
    return Family("roberta", hf_model_type, architecture, config_class, ("roberta.", ""), _ROBERTA_HEAD,
                  _ROBERTA_TIED, ("{p}pooler.",), ("roberta", "xlm-roberta"), position_offset_from_pad=True,
                  head_act_is_gelu=True, aliases={"lm_head.bias": "lm_head.decoder.bias"})


FAMILIES = {
    "bert": _bert_like("bert"),
    "minilm": _bert_like("bert"),
    "unilm": _bert_like("unilm", unilm=True),
    "roberta": _roberta_like("roberta", "RobertaForMaskedLM", "RobertaConfig"),
    "xlm-roberta": _roberta_like("xlm-roberta", "XLMRobertaForMaskedLM", "XLMRobertaConfig"),
    "electra": Family(
        "electra", "electra", "ElectraForMaskedLM", "ElectraConfig", ("electra.", ""),
        (("head.transform", "generator_predictions.dense"), ("head.norm", "generator_predictions.LayerNorm"),
         ("head.bias", "generator_lm_head.bias")),
        ("generator_lm_head.weight",), ("discriminator_predictions.",), ("electra",), head_act_is_gelu=True),
}
# The opt-in copy attention (model.CopyAttention) has no HF counterpart: its weights are saved under this prefix (HF's
# *ForMaskedLM classes report them as unexpected keys and load everything else), config.json says it is there.
_COPY = ("copy", "copy_attention")
COPY_CONFIG_KEY = "copy_mechanism"
# config.json's index of the token type that marks an answer inside the source (s2s_ft/data/answers.py), named as
# s2s-ft names source_type_id / target_type_id; a row appended to the token-type embeddings when training adds it.
ANSWER_TYPE_KEY = "answer_type_id"
# Modules a checkpoint may lack, to be freshly initialised: the MLM head (headless *Model saves) and the copy attention.
_MAY_BE_FRESH = ("head.", "copy.")
# Buffers some (older) saves carry; not weights, dropped silently.
_BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def _family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(f"unknown model_type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    return FAMILIES[model_type]


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------
def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read {what} as JSON ({error})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object")
    return values


def _config_path(name: str) -> str:
    """``config_name`` may be a directory holding config.json or the JSON file itself."""
    if os.path.isdir(name):
        return os.path.join(name, CONFIG_NAME)
    if os.path.isfile(name):
        return name
    raise CheckpointError(f"{name}: config not found (expected a directory with {CONFIG_NAME} or a JSON file)")


def model_config_from_hf(model_type: str, hf_config: dict, source: str = "config") -> ModelConfig:
    """ModelConfig for an HF ``config.json`` dict; missing fields take the family's transformers defaults."""
    family = _family(model_type)
    declared = hf_config.get("model_type")
    known = {t for f in FAMILIES.values() for t in f.config_types}
    if declared in known and declared not in family.config_types:
        raise CheckpointError(f"{source}: config.json declares model_type {declared!r}, which is not a "
                              f"{model_type} checkpoint (use --model_type {declared})")
    import transformers  # deferred: only the config classes are needed, and importing them is not free

    config_class = getattr(transformers, family.config_class)
    try:
        hf = config_class(**{k: v for k, v in hf_config.items() if k not in ("model_type", "transformers_version")})
    except Exception as error:  # the config class validates field values
        raise CheckpointError(f"{source}: not a valid {family.config_class} ({error})") from None
    if hf.hidden_size % hf.num_attention_heads:
        raise CheckpointError(f"{source}: hidden_size {hf.hidden_size} is not a multiple of num_attention_heads "
                              f"{hf.num_attention_heads}")
    embedding_size = getattr(hf, "embedding_size", None) if family.name == "electra" else None
    rel_pos_bins = int(hf_config.get("rel_pos_bins", 0) or 0)
    if rel_pos_bins and not family.unilm:
        raise CheckpointError(f"{source}: rel_pos_bins={rel_pos_bins} is a UniLM feature; use --model_type unilm")
    return ModelConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size,
        hidden_act=hf.hidden_act, max_position_embeddings=hf.max_position_embeddings,
        type_vocab_size=hf.type_vocab_size, layer_norm_eps=hf.layer_norm_eps,
        hidden_dropout_prob=hf.hidden_dropout_prob, attention_probs_dropout_prob=hf.attention_probs_dropout_prob,
        initializer_range=hf.initializer_range,
        embedding_size=embedding_size if embedding_size and embedding_size != hf.hidden_size else None,
        position_offset=(hf.pad_token_id + 1) if family.position_offset_from_pad else 0,
        rel_pos_bins=rel_pos_bins, max_rel_pos=int(hf_config.get("max_rel_pos", 0) or 0) if rel_pos_bins else 0,
        copy_mechanism=bool(hf_config.get(COPY_CONFIG_KEY, False)))


def answer_segment_id(hf_config: dict) -> Optional[int]:
    """The token type of answers marked inside the source (``ANSWER_TYPE_KEY``), or None."""
    value = hf_config.get(ANSWER_TYPE_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < int(hf_config.get("type_vocab_size",
                                                                                                   2)):
        raise CheckpointError(f"{ANSWER_TYPE_KEY} {value!r} is not a token type of this model (type_vocab_size "
                              f"{hf_config.get('type_vocab_size', 2)})")
    return value


def default_segment_ids(model_type: str, hf_config: dict) -> tuple[int, int]:
    """(source_type_id, target_type_id) for the packing layer.

    As in s2s-ft: ``source_type_id`` / ``target_type_id`` from config.json when present, else 0 / 1 (the defaults of
    s2s-ft's ``UnilmConfig``, ``MinilmConfig`` and ``BertForSeq2SeqConfig``; ``from_exist_config`` copies the two
    fields from any pre-trained config that has them, and decoding reads them back from the fine-tuned config).
    RoBERTa-style models and models with fewer than two token types use 0 for both.
    """
    family = _family(model_type)
    n_types = int(hf_config.get("type_vocab_size", 2))
    if family.position_offset_from_pad or n_types < 2:
        return 0, 0
    source, target = int(hf_config.get("source_type_id", 0)), int(hf_config.get("target_type_id", 1))
    if not (0 <= source < n_types and 0 <= target < n_types):
        raise CheckpointError(f"source_type_id {source} / target_type_id {target} outside type_vocab_size {n_types}")
    return source, target


# --------------------------------------------------------------------------------------------------------------
# Weights files
# --------------------------------------------------------------------------------------------------------------
def _read_weights(directory: str) -> tuple[dict, str]:
    """State dict of ``directory`` (single or sharded safetensors / torch .bin) and the file name it came from."""
    from safetensors.torch import load_file

    def load_bin(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{path}: cannot load as a PyTorch state dict ({error})") from None

    def load_safe(path):
        try:
            return load_file(path)
        except Exception as error:
            raise CheckpointError(f"{path}: cannot load as safetensors ({error})") from None

    for name, loader in ((SAFETENSORS_NAME, load_safe), (BIN_NAME, load_bin)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return dict(loader(path)), path
        index = path + ".index.json"
        if os.path.isfile(index):
            shards = sorted(set(_read_json(index, "weights index").get("weight_map", {}).values()))
            state = {}
            for shard in shards:
                state.update(loader(os.path.join(directory, shard)))
            return state, index
    raise CheckpointError(f"{directory}: no weights file (expected {SAFETENSORS_NAME} or {BIN_NAME})")


_FUSED = re.compile(r"^(.*attention\.self\.)qkv_linear\.weight$")


def _unfuse_unilm(state: dict) -> dict:
    """Rewrite UniLM's fused attention (``qkv_linear.weight`` without bias, ``q_bias``, ``v_bias``; the key has no
    bias) into BERT's ``query`` / ``key`` / ``value`` keys; a zero key bias is exact, not an approximation."""
    state = dict(state)
    for name in [k for k in state if _FUSED.match(k)]:
        base = _FUSED.match(name).group(1)
        query, key, value = state.pop(name).chunk(3, dim=0)
        q_bias = state.pop(base + "q_bias").reshape(-1)  # stored as [1, 1, hidden] in the release
        v_bias = state.pop(base + "v_bias").reshape(-1)
        for part, weight, bias in (("query", query, q_bias), ("key", key, torch.zeros_like(q_bias)),
                                   ("value", value, v_bias)):
            state[f"{base}{part}.weight"], state[f"{base}{part}.bias"] = weight, bias
    return state


def _key_map(model: UnifiedTransformer, family: Family, prefix: str) -> dict[str, tuple[str, ...]]:
    """Our parameter name -> the HF key(s) it is made of, for every parameter of ``model``."""
    pairs = [(ours, prefix + theirs) for ours, theirs in _BODY]
    for i in range(model.config.num_hidden_layers):
        layer = f"{prefix}encoder.layer.{i}."
        pairs += [(f"layers.{i}.{ours}", layer + theirs) for ours, theirs in _LAYER]
        pairs.append((f"layers.{i}.attention.qkv", tuple(layer + part for part in _QKV)))
    pairs += list(family.head)
    pairs.append(_COPY)
    mapping = {}
    for name, _ in model.named_parameters():  # shared tensors (the tied decoder) are listed once
        for ours, theirs in pairs:
            leaf = name[len(ours):] if name == ours or name.startswith(ours + ".") else None
            if leaf is not None:
                keys = theirs if isinstance(theirs, tuple) else (theirs,)
                mapping[name] = tuple(key + leaf for key in keys)
                break
        else:
            raise AssertionError(f"no checkpoint name for parameter {name}")  # transformer.py grew a parameter
    return mapping


def _guess_family(keys) -> str:
    starts = {k.split(".", 1)[0] for k in keys}
    for start, model_type in (("roberta", "roberta"), ("electra", "electra"), ("bert", "bert")):
        if start in starts:
            return f" (its keys start with '{start}.'; is it a {model_type} checkpoint?)"
    return f" (its keys start with {', '.join(sorted(starts)[:5])})"


def _extend_positions(table: torch.Tensor, rows: int, offset: int) -> torch.Tensor:
    """Grow a position table to ``rows`` rows, s2s-ft style: logical position p >= n reuses trained row p % n."""
    trained = table[offset:]
    n = trained.shape[0]
    extra = torch.arange(n, rows - offset) % n
    return torch.cat([table, trained[extra]], dim=0)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------
HEAD_INITS = ("random", "identity")


def load_pretrained(model_type: str, model_name_or_path: Optional[str], config_name: Optional[str] = None,
                    min_positions: Optional[int] = None, log: logging.Logger = _LOG,
                    head_init: str = "random", dropout: Optional[float] = None,
                    copy_mechanism: bool = False, answer_type: bool = False) -> tuple[UnifiedTransformer, dict]:
    """Build a ``UnifiedTransformer`` from a local HF / UniLM checkpoint directory.

    ``config_name`` (a directory or a JSON file) replaces the directory's config.json; with ``model_name_or_path``
    None the model is randomly initialised from it. ``min_positions``: the position table is extended (trained rows
    repeated cyclically) if it has fewer usable positions.

    Returns ``(model, info)``; info holds ``hf_config`` (the config.json content as read), ``model_type``, ``family``,
    ``weights_file``, ``fresh`` (our parameter names not filled from the file), ``fresh_head`` and
    ``positions_extended`` (None or ``(old_positions, new_positions)``).

    ``head_init`` says how an MLM head that the checkpoint lacks starts: ``random`` (BERT's init) or ``identity``
    (``MLMHead.start_as_identity``; falls back to random, with a warning, where the widths differ).

    ``dropout`` (None: the config's) replaces both the hidden and the attention dropout probability; the saved
    fine-tuned config records the value trained with.

    ``copy_mechanism``: add the copy attention (``model.CopyAttention``) when the checkpoint has none (it starts
    fresh); a checkpoint whose config.json has it keeps it either way.

    ``answer_type``: a token type for answers marked in the source, where the checkpoint has none (``_add_answer_type``).
    """
    if head_init not in HEAD_INITS:
        raise CheckpointError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {head_init!r}")
    family = _family(model_type)
    if model_name_or_path is None and config_name is None:
        raise CheckpointError("neither a checkpoint directory nor a config_name was given")
    if model_name_or_path is not None and not os.path.isdir(model_name_or_path):
        raise CheckpointError(f"{model_name_or_path}: checkpoint directory not found")
    config_path = _config_path(config_name) if config_name else os.path.join(model_name_or_path, CONFIG_NAME)
    hf_config = _read_json(config_path, "config.json")
    config = model_config_from_hf(model_type, hf_config, config_path)
    if dropout is not None:
        if not 0 <= dropout < 1:
            raise CheckpointError(f"dropout must lie in [0, 1), got {dropout}")
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    config.copy_mechanism = config.copy_mechanism or copy_mechanism
    added_type = answer_type and _add_answer_type(config, hf_config, config_path)
    if family.head_act_is_gelu and config.hidden_act != "gelu":
        log.warning("%s: hidden_act is %s, but HF's %s head always uses gelu; our MLM head follows hidden_act",
                    config_path, config.hidden_act, family.architecture)

    info = {"hf_config": hf_config, "model_type": model_type, "family": family.name, "weights_file": None,
            "fresh": [], "fresh_head": False, "positions_extended": None, "answer_type_added": added_type}
    usable = config.max_position_embeddings - config.position_offset
    if min_positions is not None and min_positions > usable:
        config.max_position_embeddings = min_positions + config.position_offset
        info["positions_extended"] = (usable, min_positions)
        log.warning("%s: extending the position table from %d to %d positions%s", model_name_or_path or config_path,
                    usable, min_positions, " (trained rows repeated cyclically)" if model_name_or_path else "")
    try:
        model = UnifiedTransformer(config)
    except ValueError as error:  # e.g. an activation transformer.py does not know
        raise CheckpointError(f"{config_path}: {error}") from None

    if model_name_or_path is None:
        info["fresh"] = [name for name, _ in model.named_parameters()]
        info["fresh_head"] = True
        log.info("randomly initialised %s model from %s (%.1fM parameters)", model_type, config_path,
                 model.num_parameters() / 1e6)
        return model, info

    state, weights_file = _read_weights(model_name_or_path)
    info["weights_file"] = weights_file
    if family.unilm:
        state = _unfuse_unilm(state)
    trained_rows = usable + config.position_offset if info["positions_extended"] else None
    info["fresh"] = _fill(model, family, state, weights_file, log, trained_rows, added_type)
    info["fresh_head"] = any(name.startswith("head.") for name in info["fresh"])
    if info["fresh_head"] and head_init == "identity":
        try:
            model.head.start_as_identity(model.layers[-1].ffn_norm)
            log.info("%s: the fresh MLM head starts as the identity (transform = I, LayerNorm copied from the last "
                     "layer)", weights_file)
        except ValueError as error:
            log.warning("%s: %s; the fresh MLM head keeps its random start", weights_file, error)
    return model, info


def _add_answer_type(config: ModelConfig, hf_config: dict, config_path: str) -> bool:
    """One more token type, for answers marked inside the source, unless ``hf_config`` has one; True if added. The
    new row of the token-type embeddings starts as a copy of the last existing row (``_fill``: BERT's second segment,
    "sentence B"; RoBERTa's only row); ``hf_config`` records its index as ``answer_type_id``."""
    if ANSWER_TYPE_KEY in hf_config:
        return False
    if config.type_vocab_size < 1:
        raise CheckpointError(f"{config_path}: the model has no token-type embeddings to mark an answer with; use the "
                              f"answer encoding 'segment'")
    hf_config[ANSWER_TYPE_KEY] = config.type_vocab_size
    config.type_vocab_size += 1
    hf_config["type_vocab_size"] = config.type_vocab_size
    return True


def _fill(model: UnifiedTransformer, family: Family, state: dict, source: str, log: logging.Logger,
          trained_rows: Optional[int], added_type: bool = False) -> list[str]:
    """Copy ``state`` into ``model``; returns the names left at their fresh initialisation.

    ``trained_rows``: when the position table is being extended, the row count the file's table must have.
    ``added_type``: the token-type table has one more row than the file's (the answer type), a copy of its last.
    """
    prefix = next((p for p in family.prefixes if p + "embeddings.word_embeddings.weight" in state), None)
    if prefix is None:
        expected = family.prefixes[0] + "embeddings.word_embeddings.weight"
        raise CheckpointError(f"{source}: no '{expected}' key, so not a {family.name}-format checkpoint"
                              + _guess_family(state))
    for hf_key, old_key in family.aliases.items():
        if hf_key not in state and old_key in state:
            state[hf_key] = state[old_key]
    if prefix + "rel_pos_bias.weight" in state and model.rel_pos_bias is None:
        raise CheckpointError(f"{source}: has a relative position bias ({prefix}rel_pos_bias.weight); that needs "
                              f"--model_type unilm and rel_pos_bins / max_rel_pos in config.json")
    key_map = _key_map(model, family, prefix)
    used, fresh = set(), []
    # a module the file lacks entirely starts fresh; one it has in part is an incomplete checkpoint
    absent = {prefix_: not ({k for name, keys in key_map.items() if name.startswith(prefix_) for k in keys}
                            & state.keys()) for prefix_ in _MAY_BE_FRESH}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keys in key_map.items():
            missing = [k for k in keys if k not in state]
            if missing:
                if any(name.startswith(p) and absent[p] for p in _MAY_BE_FRESH):
                    fresh.append(name)
                    continue
                hint = ("; it has UniLM fused attention (qkv_linear), use --model_type unilm"
                        if any("qkv_linear" in k for k in state) else "")
                raise CheckpointError(f"{source}: missing key {missing[0]} (needed for {name}); not a complete "
                                      f"{family.name}-format checkpoint{hint}")
            tensor = torch.cat([state[k] for k in keys], dim=0) if len(keys) > 1 else state[keys[0]]
            param = params[name]
            if name == "embeddings.position.weight" and tensor.shape[0] == trained_rows:
                tensor = _extend_positions(tensor, param.shape[0], model.config.position_offset)
            if name == "embeddings.token_type.weight" and added_type and tensor.shape[0] == param.shape[0] - 1:
                tensor = torch.cat([tensor, tensor[-1:]], dim=0)
            if tensor.shape != param.shape:
                raise CheckpointError(f"{source}: {' + '.join(keys)} has shape {tuple(tensor.shape)}, expected "
                                      f"{tuple(param.shape)} for {name} from the config")
            param.copy_(tensor)
            used.update(keys)
    if any(name.startswith("head.") for name in fresh):
        log.info("%s has no MLM head (%s): freshly initialised its transform, LayerNorm and bias; the decoder stays "
                 "tied to the word embeddings", source, family.head[0][1].rsplit(".", 1)[0])

    leftover = set(state) - used
    for key in family.tied:
        if key in leftover:
            leftover.discard(key)
            if key.endswith(".weight") and not torch.equal(state[key].to(params["embeddings.word.weight"].dtype),
                                                           params["embeddings.word.weight"]):
                log.warning("%s: %s differs from the word embeddings; the model ties them, so it was dropped",
                            source, key)
    ignored = sorted(k for k in leftover
                     if any(k.startswith(p.format(p=prefix)) for p in family.ignored) or k.endswith(_BUFFER_SUFFIXES))
    if ignored:
        weights = [k for k in ignored if not k.endswith(_BUFFER_SUFFIXES)]
        if weights:
            log.info("%s: ignoring %d weights with no use in seq2seq (%s)", source, len(weights),
                     ", ".join(sorted({k.rsplit(".", 1)[0] for k in weights})))
        leftover -= set(ignored)
    if leftover:
        log.warning("%s: %d unknown keys left unused: %s", source, len(leftover), ", ".join(sorted(leftover)))
    return fresh


def save_checkpoint(model: UnifiedTransformer, out_dir: str, model_type: str, hf_config: dict,
                    tokenizer=None, settings: Optional[dict] = None) -> None:
    """Write ``out_dir`` as the family's ``*ForMaskedLM`` checkpoint plus ``s2s_ft_settings.json``.

    config.json is ``hf_config`` with the model's current sizes (e.g. an extended ``max_position_embeddings``) and
    ``architectures`` = the family's *ForMaskedLM. Tied decoder weights are left out, as ``save_pretrained`` does.
    UniLM checkpoints are written as BERT (``model_type`` "bert", separate q/k/v) plus the config keys
    ``rel_pos_bins`` / ``max_rel_pos``; with a relative position bias the file also holds ``bert.rel_pos_bias.weight``,
    which HF's ``BertForMaskedLM`` does not know (it reports it as unexpected and would run without it); without
    one the checkpoint loads cleanly in HF.
    """
    from safetensors.torch import save_file

    family = _family(model_type)
    settings = dict(settings or {})
    settings.setdefault("model_type", model_type)
    if settings["model_type"] != model_type:
        raise CheckpointError(f"settings say model_type {settings['model_type']!r} but {model_type!r} was given")
    os.makedirs(out_dir, exist_ok=True)

    state, params = {}, dict(model.named_parameters())
    for name, keys in _key_map(model, family, family.prefixes[0]).items():
        tensor = params[name].detach()
        # clone: safetensors refuses views that share storage (the three slices of qkv)
        for key, part in zip(keys, tensor.chunk(len(keys), dim=0)):
            state[key] = part.to("cpu", copy=True).contiguous()
    save_file(state, os.path.join(out_dir, SAFETENSORS_NAME), metadata={"format": "pt"})

    c = model.config
    config = dict(hf_config)
    config.update(
        model_type=family.hf_model_type, architectures=[family.architecture], vocab_size=c.vocab_size,
        hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps, hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob, initializer_range=c.initializer_range,
        tie_word_embeddings=True)
    if family.position_offset_from_pad:
        config["pad_token_id"] = c.position_offset - 1
    if family.name == "electra":
        config["embedding_size"] = c.word_embedding_size
    if family.unilm:
        config.update(rel_pos_bins=c.rel_pos_bins, max_rel_pos=c.max_rel_pos)
    config.pop(COPY_CONFIG_KEY, None)
    if c.copy_mechanism:
        config[COPY_CONFIG_KEY] = True
    with open(os.path.join(out_dir, CONFIG_NAME), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, SETTINGS_NAME), "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2, sort_keys=True)


def load_finetuned(ckpt_dir: str, log: logging.Logger = _LOG) -> tuple[UnifiedTransformer, dict]:
    """Model and settings of a directory written by :func:`save_checkpoint`."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: checkpoint directory not found")
    settings = _read_json(os.path.join(ckpt_dir, SETTINGS_NAME), "s2s-ft settings")
    model_type = settings.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{os.path.join(ckpt_dir, SETTINGS_NAME)}: model_type {model_type!r} is not one of "
                              f"{', '.join(MODEL_TYPES)}")
    model, info = load_pretrained(model_type, ckpt_dir, log=log)
    if info["fresh"]:
        raise CheckpointError(f"{info['weights_file']}: fine-tuned checkpoint lacks {', '.join(info['fresh'])}")
    return model, settings
