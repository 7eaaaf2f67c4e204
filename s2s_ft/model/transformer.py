"""The one shared Transformer: encoder and decoder are the same weights and the same code.

Everything the model needs to know about *who may attend to whom* arrives as two integers per token
(see ``attention_allowed``); the fine-tuning methods, MASS pre-training and the incremental decoder only
differ in the ranks they hand in, never in model code.

Layout of this file, top to bottom: config dataclass -> attention-mask rule -> relative position bias ->
key/value cache -> layers -> the MLM head and the opt-in copy attention -> the model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# A key rank no query rank reaches: the token is visible to nobody but itself (padding, pseudo masks).
NEVER_VISIBLE = 2**30


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: the family has no token-type embeddings
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    # Width of the word embeddings when it differs from the hidden size (ELECTRA generators); the MLM head maps
    # back to this width so its decoder can stay tied to the word embeddings.
    embedding_size: Optional[int] = None
    # RoBERTa-style tables keep rows 0..padding_idx for padding; logical position p reads row p + offset.
    position_offset: int = 0
    # UniLMv2-style relative position bias (T5 buckets); 0 switches it off.
    rel_pos_bins: int = 0
    max_rel_pos: int = 0
    # Opt-in pointer over the source (``CopyAttention``): the next-token distribution mixes the vocabulary head with a
    # copy distribution over the source's word pieces.
    copy_mechanism: bool = False

    @property
    def word_embedding_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------------------------------------------
# The attention rule. Every token carries a key rank (when it becomes visible) and a query rank (how far it sees):
#   query q may attend key k  <=>  key_rank[k] <= query_rank[q]  or  k is q itself.
# Source tokens: key 0 / query 0 (bidirectional among themselves, blind to the target).
# Real target token i (1-based): key i / query i (sees the source and real targets <= i).
# Pseudo mask for target i: key NEVER_VISIBLE / query i-1 (sees source and real targets < i, and itself).
# Padding: key NEVER_VISIBLE / query -1 (sees only itself, so its softmax row stays finite; nobody sees it).
# --------------------------------------------------------------------------------------------------------------
def attention_allowed(key_rank: torch.Tensor, query_rank: torch.Tensor, query_offset: int = 0) -> torch.Tensor:
    """Boolean [B, 1, Lq, Lk] mask, True where attention is allowed.

    ``key_rank`` is [B, Lk], ``query_rank`` is [B, Lq]; query j is the same token as key ``query_offset + j``.
    """
    lq, lk = query_rank.shape[1], key_rank.shape[1]
    allowed = key_rank[:, None, :] <= query_rank[:, :, None]
    same_token = torch.arange(lk, device=key_rank.device)[None, :] == (
        torch.arange(lq, device=key_rank.device)[:, None] + query_offset)
    return (allowed | same_token[None]).unsqueeze(1)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 / UniLMv2 bidirectional buckets: exact for small distances, log-spaced up to ``max_distance``."""
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(is_small, distance, large)


# --------------------------------------------------------------------------------------------------------------
# Key/value cache for incremental decoding. Pre-allocated for the longest sequence so a step never concatenates
# the history: a forward writes its new tokens at [length, length + n_new) and only the first ``n_store`` of them
# are kept (the rest, e.g. the [MASK] that predicts the next token, are overwritten by the next step).
#
# Beam search caches a sentence's k beams as one sequence: its source once, then the beams' target tokens side by
# side in the order they were fed; each beam attends only to its own tokens (``visible`` in forward), so the
# source is stored and read once per sentence and a beam reorder moves nothing (decoding/search.py keeps the columns).
# --------------------------------------------------------------------------------------------------------------
class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_length: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (config.num_hidden_layers, batch_size, config.num_attention_heads, max_length, config.head_dim)
        # Not zeroed: a column is written (layer_kv) before any forward reads it, and reads stop at the columns
        # written so far; zeroing cost a memset of the whole cache per decoding call
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.key_rank = torch.full((batch_size, max_length), NEVER_VISIBLE, device=device, dtype=torch.long)
        self.positions = torch.zeros((batch_size, max_length), device=device, dtype=torch.long)
        self.length = 0
        self.max_length = max_length

    # -- the three calls the model makes during one forward (a cache of another layout, e.g. the Hugging Face
    # wrapper's view of a ``transformers`` Cache in s2s_ft/hf/, implements the same three) --------------------------
    def begin(self, key_rank: torch.Tensor, positions: torch.Tensor, n_store: int):
        """Append ``key_rank`` / ``positions`` [B, n] of n new tokens, of which the first ``n_store`` stay; returns
        (index of the first new token among the keys, key ranks and positions of all keys [B, length + n])."""
        offset, end = self.length, self.length + key_rank.shape[1]
        if end > self.max_length:
            raise ValueError(f"cache holds {self.max_length} tokens; {end} requested")
        self.key_rank[:, offset:end] = key_rank
        self.positions[:, offset:end] = positions
        self._pending = (offset, key_rank.shape[1], n_store)
        return offset, self.key_rank[:, :end], self.positions[:, :end]

    def layer_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer ``layer``'s keys / values [B, H, n, d] of the new tokens; returns those of all keys."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def end(self) -> None:
        offset, n_new, kept = self._pending
        # Tokens written but not kept must become invisible to later steps (the next step overwrites them).
        self.key_rank[:, offset + kept:offset + n_new] = NEVER_VISIBLE
        self.length += kept

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes row ``index[i]``, in new tensors: rows leave the batch (finished sentences or samples) or
        are repeated (a source for each of its samples)."""
        self.keys = self.keys.index_select(1, index)
        self.values = self.values.index_select(1, index)
        self.key_rank = self.key_rank.index_select(0, index)
        self.positions = self.positions.index_select(0, index)


# --------------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------------
_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


def _dropout_cpu(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout from a uniform draw: on CPU ~1.5x faster than ``F.dropout`` (whose Bernoulli sampler is the slow part),
    same distribution, same default generator (so resuming and activation checkpointing replay it exactly)."""
    keep = torch.rand(x.shape, device=x.device) >= p
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the faster draw on CPU (a subclass, so code that finds dropouts by type still does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0 and x.device.type == "cpu":
            return _dropout_cpu(x, self.p)
        return super().forward(x)


def attention(q, k, v, mask: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` where it is the fast path: decoding, and any GPU. A CPU training step
    (gradients on) computes the same attention unfused instead: SDPA's fused CPU kernel takes no dropout (its fallback
    samples slow Bernoulli masks), and even without dropout its masked forward + backward made a bf16 recipe step 1.45x
    slower than this (1.107 against 0.764 s, 2-core AMX Xeon; benchmarks/train_attention_speed.py). Decoding stays
    on SDPA: unfused, it decoded at 0.97x. ``mask``: boolean (True = may attend) or additive, as SDPA takes it."""
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return unfused_attention(q, k, v, mask, dropout_p)


def unfused_attention(q, k, v, mask: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
    """Softmax attention written out, dropout with the faster draw."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, -1)
    return (_dropout_cpu(probs, dropout_p) if dropout_p > 0 else probs) @ v


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)  # fused q, k, v
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], cache, layer: int,
                n_out: Optional[int] = None) -> torch.Tensor:
        """Outputs of every token, or of the last ``n_out`` only (all tokens' keys and values are still cached)."""
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_head, h // self.n_head).permute(2, 0, 3, 1, 4)
        if n_out is not None:
            q, mask = q[:, :, n - n_out:], (mask[..., n - n_out:, :] if mask is not None else None)
        if cache is not None:
            k, v = cache.layer_kv(layer, k, v)
        y = attention(q, k.to(q.dtype), v.to(q.dtype), mask, self.dropout_p if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, q.shape[2], h))


class TransformerLayer(nn.Module):
    """Post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = activation(config.hidden_act)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask, cache, layer: int, n_out: Optional[int] = None):
        attended = self.attention(x, mask, cache, layer, n_out)
        if n_out is not None:  # only the last n_out tokens go on
            x = x[:, x.shape[1] - n_out:]
        x = self.attention_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.word_embedding_size
        self.word = nn.Embedding(config.vocab_size, width)
        self.position = nn.Embedding(config.max_position_embeddings, width)
        self.token_type = nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        # ELECTRA generators embed narrower than they compute.
        self.project = nn.Linear(width, config.hidden_size) if width != config.hidden_size else None
        self.position_offset = config.position_offset

    def forward(self, input_ids, position_ids, token_type_ids):
        rows = position_ids + self.position_offset  # the one place the RoBERTa offset is applied
        # Checked where it is free: on an accelerator it would be a host sync every forward. There the callers keep
        # positions in range up front (training extends the table to the maximum lengths, the decoder checks each
        # batch's budget).
        if rows.device.type == "cpu" and int(rows.max()) >= self.position.num_embeddings:
            raise ValueError(f"position {int(position_ids.max())} exceeds the position table "
                             f"({self.position.num_embeddings - self.position_offset} positions)")
        x = self.word(input_ids) + self.position(rows)
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids)
        x = self.dropout(self.norm(x))
        return self.project(x) if self.project is not None else x


class MLMHead(nn.Module):
    """dense + act + LayerNorm, then a decoder tied to the word embeddings, plus a bias."""

    def __init__(self, config: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.word_embedding_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.word_embedding_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.word_embeddings = word_embeddings  # shared module, not a copy

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return vocabulary_logits(self.norm(self.act(self.transform(hidden))), self.word_embeddings.weight, self.bias)

    @torch.no_grad()
    def start_as_identity(self, scale_like: nn.LayerNorm) -> None:
        """Start a fresh head as (nearly) a pass-through: transform = I, zero biases, and the LayerNorm copied from
        ``scale_like`` (the body's last LayerNorm, so the head's output has the scale of the body's output).

        Why: a body that keeps token identity in its last hidden states then scores each word by its similarity to
        the (tied) word embeddings from step 0, which is what copying a source word needs; a random transform hides
        that and has to be learnt first. Needs hidden_size == the word-embedding width (not ELECTRA generators).
        """
        if self.transform.weight.shape[0] != self.transform.weight.shape[1]:
            raise ValueError(f"an identity head needs a square transform, got {tuple(self.transform.weight.shape)}")
        self.transform.weight.copy_(torch.eye(self.transform.weight.shape[0]))
        self.transform.bias.zero_()
        self.norm.weight.copy_(scale_like.weight)
        self.norm.bias.copy_(scale_like.bias)
        self.bias.zero_()


# Decoding rows per step at which the product is taken transposed, and the vocabulary panel of the blocked product.
TRANSPOSED_MAX_ROWS, VOCABULARY_PANEL = 16, 2048


def vocabulary_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for the vocabulary projection, the largest matmul of a decoding step.

    Why not F.linear alone: on the CPU BLAS measured (MKL, 2-core Zen 4; ``benchmarks/vocabulary_projection.py``
    prints the comparison on yours) a few rows against a 30k-row weight run far below the matmul peak. Without
    gradients (decoding, dev evaluation) on a CPU, up to TRANSPOSED_MAX_ROWS rows are computed as (W xᵀ)ᵀ, which
    streams the weight once (batch-1 beam 5: ~3x faster), and more rows in VOCABULARY_PANEL-word panels whose
    outputs stay in cache (17-400 rows: ~10-25 % faster). Each logit is still one dot product plus its bias."""
    if (x.device.type != "cpu" or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
            or x.dtype != weight.dtype):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] <= TRANSPOSED_MAX_ROWS:
        out = torch.addmm(bias[:, None], weight, rows.t()).t().contiguous()
    else:
        out = rows.new_empty(rows.shape[0], weight.shape[0])
        for i in range(0, weight.shape[0], VOCABULARY_PANEL):
            panel = slice(i, i + VOCABULARY_PANEL)
            torch.addmm(bias[panel], rows, weight[panel].t(), out=out[:, panel])
    return out.view(*x.shape[:-1], weight.shape[0])


# --------------------------------------------------------------------------------------------------------------
# The copy mechanism (opt-in, ``ModelConfig.copy_mechanism``). The next token's distribution is a mixture
#   P(w) = g * P_vocab(w) + (1 - g) * sum_{j: source_j = w} a_j
# of the MLM head's distribution and a copy attention ``a`` over the source's word pieces (scatter-added into
# word-piece ids: no extended vocabulary), with a learned gate g = sigmoid(w . h + b) from the predicting token's last
# hidden state h (See et al. 2017). The copy attention is a separate single-head attention (query: h; keys: the last
# layer's source states, computed once per sentence): SDPA never materialises the body's attention probabilities,
# and a separate pair of projections costs about as much as reading one back while leaving the pretrained heads
# alone. Which source columns may be copied (not [CLS]/[SEP]/[MASK]/padding) is the packing layer's ``copyable``
# mask. Everything here runs in fp32, autocast or not: the mixture is a sum of probabilities.
# --------------------------------------------------------------------------------------------------------------
# The gate starts at P(vocabulary) = 0.9, so the pretrained head dominates early and the copy attention (uniform
# over the source at first) adds a small prior for source words.
COPY_GATE_START = math.log(9.0)
# Probabilities below this are treated as 0 inside the log (no log(0) and no NaN gradient for words not in the
# source); it adds at most vocab_size * 1e-30 to the mixture's mass.
COPY_TINY = 1e-30


def same_word_index(ids: torch.Tensor) -> torch.Tensor:
    """[N, S] index of each column's word among its row's distinct words (columns with the same id share it; all
    indices < S): sums over a row's occurrences of a word cost [N, S], not [N, S, S] or [N, V]."""
    ordered, order = ids.sort(-1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.empty_like(ids).scatter_(1, order, starts.long().cumsum(-1) - 1)


class CopyAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.gate = nn.Linear(config.hidden_size, 1)  # logit of P(from the vocabulary)
        self.scale = 1.0 / math.sqrt(config.hidden_size)

    def reset_gate(self) -> None:
        with torch.no_grad():
            self.gate.bias.fill_(COPY_GATE_START)

    def source_keys(self, source_hidden: torch.Tensor) -> torch.Tensor:
        """[B, S, hidden] keys of the source states (a decoder computes them once per sentence)."""
        with torch.autocast(source_hidden.device.type, enabled=False):
            return self.key(source_hidden.float())

    def scores(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[B, Lq, S] copy-attention logits of the queries ``hidden`` [B, Lq, hidden] over ``keys`` [B, S, hidden]."""
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.matmul(self.query(hidden.float()), keys.transpose(1, 2)) * self.scale

    def mixture(self, hidden: torch.Tensor, vocab_at_columns: torch.Tensor, scores: torch.Tensor,
                source_ids: torch.Tensor, copyable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mixture for N predicting tokens, without a second [N, V] pass: their hidden states [N, hidden], the
        MLM head's log-probability of each column's word [N, S], copy logits [N, S] over their rows' columns, those
        columns' ids [N, S] and which of them may be copied [N, S]. Returns

        * ``log_vocab_share`` [N, 1]: log g; a word in no copyable column has log P(w) = log g + log P_vocab(w);
        * ``column_log_probs`` [N, S]: log P of the word in each column (meaningful where copyable);
        * ``same_word`` [N, S]: how many copyable columns hold each column's word (a word is one outcome).

        A row with nothing to copy gets the vocabulary distribution alone (log g = 0)."""
        with torch.autocast(hidden.device.type, enabled=False):
            any_copyable = copyable.any(-1, keepdim=True)
            attention = torch.softmax(scores.float().masked_fill(~copyable, float("-inf")), -1)
            attention = attention.masked_fill(~any_copyable, 0.0)  # all -inf rows: NaN -> no copy mass
            # a word is one outcome: sum the attention of the columns that hold it, in a per-row word index
            word = same_word_index(source_ids)
            copy_mass = torch.zeros_like(attention).scatter_add_(1, word, attention).gather(1, word)
            same_word = torch.zeros_like(attention).scatter_add_(1, word, copyable.float()).gather(1, word)
            gate = self.gate(hidden.float())  # [N, 1]
            log_vocab_share = torch.where(any_copyable, F.logsigmoid(gate), torch.zeros_like(gate))
            log_copy_share = torch.where(any_copyable, F.logsigmoid(-gate), torch.full_like(gate, float("-inf")))
            column = torch.logaddexp(log_vocab_share + vocab_at_columns,
                                     log_copy_share + torch.log(copy_mass.clamp_min(COPY_TINY)))
            return log_vocab_share, column, same_word


class UnifiedTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))
        # nn.Linear shape (heads x bins) as in the UniLM release, used as a lookup table.
        self.rel_pos_bias = (nn.Linear(config.rel_pos_bins, config.num_attention_heads, bias=False)
                             if config.rel_pos_bins > 0 else None)
        self.head = MLMHead(config, self.embeddings.word)
        self.copy = CopyAttention(config) if config.copy_mechanism else None
        # Trade compute for memory in training: keep only each layer's input and recompute the layer in the backward
        # pass (about one extra forward). Ignored in eval mode and with a KV cache (decoding has no backward).
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        if self.copy is not None:
            self.copy.reset_gate()

    def set_dropout(self, enabled: bool) -> None:
        """Switch every dropout off, or back to the config's rates, leaving the config (and so the saved checkpoint)
        alone: late dropout trains its first steps without dropout and turns it on at a chosen step."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = self.config.hidden_dropout_prob if enabled else 0.0
            elif isinstance(module, SelfAttention):
                module.dropout_p = self.config.attention_probs_dropout_prob if enabled else 0.0

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _attention_mask(self, key_rank, query_rank, key_positions, query_positions, query_offset, dtype,
                        visible=None):
        """``attn_mask`` for F.scaled_dot_product_attention: a boolean [B, 1, Lq, Lk] mask on a GPU (which the
        memory-efficient kernel accepts) and an additive one (0 / -inf, in the compute dtype ``dtype``) on a CPU,
        None when every query may see every key (then the flash kernel, which takes no mask, is eligible too), or
        with a relative position bias an additive [B, H, Lq, Lk] mask. ``visible`` [B, Lq, Lk] further restricts
        the rank rule."""
        allowed = attention_allowed(key_rank, query_rank, query_offset)
        if visible is not None:
            allowed = allowed & visible[:, None]
        if self.rel_pos_bias is None:
            # Nothing is masked when the decoder encodes sources of equal length or feeds its first step. The test is
            # a host sync on a GPU: decoding syncs every step anyway, training skips it (its batches always hold
            # target tokens that the source may not see).
            if not self.training and bool(allowed.all()):
                return None
            if allowed.device.type == "cpu":
                # SDPA's CPU kernels turn a boolean mask into an additive one (0 / -inf) on every call, i.e. once per
                # layer; once per forward here is the same arithmetic (benchmarks/decode_profile.py: aten::where)
                return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                                    float("-inf"))
            return allowed
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # key minus query, as UniLMv2
        buckets = relative_position_bucket(relative, self.config.rel_pos_bins, self.config.max_rel_pos)
        bias = F.embedding(buckets, self.rel_pos_bias.weight.t()).permute(0, 3, 1, 2)  # [B, H, Lq, Lk]
        return bias.to(dtype).masked_fill(~allowed, float("-inf"))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor,
                key_rank: torch.Tensor, query_rank: torch.Tensor, cache=None,
                n_store: Optional[int] = None, n_out: Optional[int] = None,
                visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Hidden states [B, n, hidden] of the given tokens (call ``self.head`` for vocabulary logits).

        With a ``cache``, the tokens are appended after the ``cache.length`` tokens already there, attend to them
        by the same rank rule, and the first ``n_store`` (default: all) stay in the cache for later calls.
        ``n_out``: only the last n_out tokens' hidden states are wanted (a decoding step's predictors); the last
        layer then computes its attention output and feed-forward for them alone (of the others, later steps read
        only the keys and values, which every layer still computes). ``visible`` [B, n, keys]: which keys each new
        token may see at most (the rank rule still applies); beam search uses it to cache a sentence's beams as
        one sequence in which each beam sees only the source and its own tokens.
        """
        n_new = input_ids.shape[1]
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        if cache is None:
            key_rank_all, key_positions, offset = key_rank, position_ids, 0
        else:
            offset, key_rank_all, key_positions = cache.begin(key_rank, position_ids,
                                                              n_new if n_store is None else n_store)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        mask = self._attention_mask(key_rank_all, query_rank, key_positions, position_ids, offset, dtype, visible)
        for index, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                # Non-reentrant: works with inputs that need no grad and replays the layer's dropout RNG exactly.
                x = checkpoint(layer, x, mask, None, index, use_reentrant=False)
            else:
                x = layer(x, mask, cache, index, n_out if index == len(self.layers) - 1 else None)
        if cache is not None:
            cache.end()
        return x

    def log_probs(self, hidden: torch.Tensor, copy_scores: Optional[torch.Tensor] = None,
                  source_ids: Optional[torch.Tensor] = None, copyable: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, V] fp32 next-token log-probabilities of the predicting tokens' hidden states [N, hidden]: the MLM
        head's softmax, or with the copy mechanism the mixture (``CopyAttention.mixture``; the copy arguments are the
        rows' copy logits [N, S], source ids [N, S] and copyable mask [N, S])."""
        vocab = torch.log_softmax(self.head(hidden).float(), -1)
        if self.copy is None:
            return vocab
        log_vocab_share, column, _ = self.copy.mixture(hidden, vocab.gather(1, source_ids), copy_scores, source_ids,
                                                       copyable)
        # every word at log g + log P_vocab, then the copyable columns' words at their mixture value, which is the
        # larger of the two (the copy part only adds mass): amax leaves other columns' words as they were
        return (log_vocab_share + vocab).scatter_reduce(1, source_ids, column, reduce="amax")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
