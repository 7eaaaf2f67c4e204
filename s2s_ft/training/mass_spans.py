"""MASS (Song et al., ICML 2019) as a source/target pair for the shared packer.

A sentence ``x`` of m word pieces (no special tokens) becomes:

* **source**: ``x`` with one contiguous fragment ``x[u:u+k]`` corrupted -- each fragment token becomes [MASK],
  stays unchanged or becomes a random vocabulary token with probabilities (mask, keep, rand), default
  (0.8, 0.1, 0.1). This is the order of the MASS code's ``--word_mask_keep_rand`` (its ``pred_probs``: index 0
  mask, 1 keep the real word, 2 random). The source length is unchanged, so every token keeps its position.
* **target**: the k fragment tokens only, predicted left to right, each at its *original* sentence position. The
  packer lays the source out as ``[CLS] x [SEP]``, so fragment token j sits at position ``1 + u + j`` (the column
  of the token it replaces). No closing [SEP] is appended or predicted (``Pair.close_target=False``): MASS
  predicts the fragment and nothing else, and the unmasked positions are not padded into the decoder.

Fragment length ``k = round(ratio * m)`` (Python's ``round``, halves to even, as in the MASS code), clamped to
1..m. Start ``u``:

* ``"uniform"`` (default): uniform over the m - k + 1 valid starts 0..m-k.
* ``"mass"``: the MASS code's scheme (``shuffle_segments`` in MASS-unsupNMT's trainer): with probability 0.2 the
  fragment is pinned at the start (u = 0), with probability 0.2 at the end (u = m - k), otherwise (0.6) uniform
  over all valid starts -- so u = 0 has probability 0.2 + 0.6 / (m - k + 1), and likewise u = m - k.

How the target is fed is the packer's business (``--fine_tune``), exactly as in fine-tuning:

* ``causal``: the input at fragment position j is fragment token j-1, and at j = 0 the decoder start token
  ([SEP]), the same start symbol fine-tuning and decoding use. This follows the MASS paper's decoder (its
  figures feed the mask symbol at j = 0, e.g. "[M] x3 x4 x5" for the fragment x3..x6: tokens unmasked in the
  encoder are not given to the decoder). The MASS code (``restricted_mask_sent``) instead feeds the original token
  before the fragment at j = 0; that token is unmasked in the source and visible to every target token anyway.
  Inputs sit at the predicted token's position (the s2s-ft position shift), where MASS's decoder places them one
  position earlier; both are "input j-1, predict j".
* ``pseudo_masked``: the fragment itself (word drop with ``--target_mask_prob``) plus one pseudo [MASK] per
  fragment token at the same position, predicting it. ``masked`` also runs (a random subset of the fragment is
  predicted) but is not MASS.

Special cases: k = 1 is masked-LM of one token (its only target token reads the start token and the corrupted
source); k = m is a left-to-right LM conditioned on a fully corrupted source (all [MASK] with split (1, 0, 0)).

``MassConfig.full_target`` (``--mass_full_target``) instead feeds the paper's full-length decoder input: all m
positions, [MASK] outside the fragment, loss on the fragment only. Same predictions, about twice the target-part
compute; it exists to measure the saving of the default.

Not reproduced: MASS-unsupNMT also hides the encoder's [MASK] positions from the decoder's cross-attention
(``enc_mask``); here target tokens attend to the whole source, [MASK]s included, by the one attention rule.

Everything random is drawn from the ``torch.Generator`` handed in, so a pair is a pure function of the sentence and
the generator state (the training loop seeds it from (seed, micro-batch counter)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from s2s_ft.data.packing import Pair, SpecialIds, corrupt_token

SPAN_POSITIONS = ("uniform", "mass")
# Special tokens before the sentence in the packer's source layout ([CLS] / <s>): fragment token j of a span
# starting at u is source column LEADING_SPECIALS + u + j.
LEADING_SPECIALS = 1
# The MASS code's span-position scheme: P(pinned at the start), P(pinned at the end); the rest is uniform.
MASS_PIN_START, MASS_PIN_END = 0.2, 0.2


@dataclass(frozen=True)
class MassConfig:
    ratio: float = 0.5
    mask_keep_rand: tuple[float, float, float] = (0.8, 0.1, 0.1)  # (mask, keep, rand), MASS's order
    span_position: str = "uniform"
    # Feed the whole sentence to the target part ([MASK] outside the fragment, loss on the fragment only): the MASS
    # paper's padded decoder. Off by default -- it costs ~2x the target compute for the same predictions; it exists
    # for the throughput comparison in benchmarks/mass_low_resource.py.
    full_target: bool = False

    def __post_init__(self):
        if not 0 < self.ratio <= 1:
            raise ValueError(f"MASS ratio {self.ratio} must lie in (0, 1]")
        split = tuple(float(p) for p in self.mask_keep_rand)
        if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"mask/keep/rand split {self.mask_keep_rand} must be three non-negative numbers "
                             f"summing to 1")
        object.__setattr__(self, "mask_keep_rand", split)
        if self.span_position not in SPAN_POSITIONS:
            raise ValueError(f"span position {self.span_position!r} must be one of {', '.join(SPAN_POSITIONS)}")


def parse_mask_keep_rand(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (mask, keep, rand); raises ValueError with a readable message."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected three comma-separated numbers (mask,keep,rand), got {text!r}") from None
    if len(values) != 3:
        raise ValueError(f"expected three comma-separated numbers (mask,keep,rand), got {text!r}")
    return MassConfig(mask_keep_rand=values).mask_keep_rand


def fragment_length(m: int, ratio: float) -> int:
    """k = round(ratio * m), at least 1 and at most m."""
    if m < 1:
        raise ValueError("MASS needs a sentence of at least one token")
    return min(m, max(1, round(ratio * m)))


def span_start(m: int, k: int, mode: str, generator: torch.Generator) -> int:
    """Start u of a k-token fragment in an m-token sentence (see the module docstring for the modes)."""
    last = m - k
    if mode == "mass":
        draw = float(torch.rand((), generator=generator))
        if draw < MASS_PIN_START:
            return 0
        if draw < MASS_PIN_START + MASS_PIN_END:
            return last
    elif mode != "uniform":
        raise ValueError(f"span position {mode!r} must be one of {', '.join(SPAN_POSITIONS)}")
    return int(torch.randint(last + 1, (), generator=generator))


def mass_pair(sentence: Sequence[int], special: SpecialIds, config: MassConfig,
              generator: torch.Generator) -> Pair:
    """One MASS example: corrupted sentence as the source, the fragment at its original positions as the target."""
    tokens = list(sentence)
    m = len(tokens)
    k = fragment_length(m, config.ratio)
    u = span_start(m, k, config.span_position, generator)
    fragment = tokens[u:u + k]
    p_mask, _, p_random = config.mask_keep_rand
    source = tokens[:u] + [corrupt_token(t, p_mask, p_random, special, generator) for t in fragment] \
        + tokens[u + k:]
    if config.full_target:
        # every sentence position is a target token; outside the fragment the decoder reads [MASK] and predicts
        # nothing, so with causal packing fragment token 0 reads [MASK] as in the paper's "[M] x3 x4 x5"
        target = [special.mask] * u + fragment + [special.mask] * (m - u - k)
        predicted = [False] * u + [True] * k + [False] * (m - u - k)
        return Pair(source=source, target=target, target_positions=[LEADING_SPECIALS + i for i in range(m)],
                    close_target=False, predicted=predicted)
    positions = [LEADING_SPECIALS + u + j for j in range(k)]
    return Pair(source=source, target=fragment, target_positions=positions, close_target=False)


def mass_pairs(sentences: Sequence[Sequence[int]], special: SpecialIds, config: MassConfig,
               generator: torch.Generator) -> list[Pair]:
    return [mass_pair(sentence, special, config, generator) for sentence in sentences]
