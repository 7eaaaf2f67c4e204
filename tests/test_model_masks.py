"""Model-side checks: attention-mask properties by brute force, training view == decoding view, KV cache,
loss formula, and an over-fitting smoke test per fine-tuning method."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    PAIRS,
    SPECIAL,
    allowed_matrix,
    closure,
    make_model,
    roles_of,
    t5_bucket,
)

from s2s_ft.data.packing import (
    IGNORE_INDEX,
    METHODS,
    Packer,
    Pair,
    SpecialIds,
    decoding_prefix,
)
from s2s_ft.model.transformer import (
    NEVER_VISIBLE,
    KVCache,
    ModelConfig,
    UnifiedTransformer,
    attention_allowed,
    relative_position_bucket,
)
from s2s_ft.training.loss import seq2seq_loss

CLS, SEP, MASK, PAD = SPECIAL.cls, SPECIAL.sep, SPECIAL.mask, SPECIAL.pad
TOL = 1e-5
pytestmark = pytest.mark.usefixtures("single_thread")


def forward(model, batch):
    with torch.no_grad():
        return model(**batch.model_inputs())


def n_src_of(pair):
    return len(pair.source) + 2


def target_of(pair):
    return [*pair.target, SEP]


# ---------------------------------------------------------------------------------------------------------------
# 2. Mask properties by brute force
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_dependencies_follow_role_rule(tiny_model, method):
    """Perturb every input token in turn; exactly the positions allowed (transitively) to read it may change."""
    batch = Packer(method, SPECIAL, corrupt=False)(PAIRS)
    base = forward(tiny_model, batch)
    width = batch.input_ids.shape[1]
    reference = allowed_matrix(PAIRS, method, width)
    assert torch.equal(attention_allowed(batch.key_rank, batch.query_rank), reference)
    for b, pair in enumerate(PAIRS):
        roles = roles_of(pair, method, width)
        reach = closure(reference[b, 0])  # reach[q, k]: q may depend on k
        for p in range(width):
            perturbed = Packer(method, SPECIAL, corrupt=False)(PAIRS)
            perturbed.input_ids[b, p] = (perturbed.input_ids[b, p] + 17) % SPECIAL.vocab_size
            diff = (forward(tiny_model, perturbed) - base).abs().amax(-1)  # [B, L]
            others = torch.ones(len(PAIRS), dtype=torch.bool)
            others[b] = False
            assert diff[others].max() < 1e-7, "a perturbation leaked into another batch row"
            for q in range(width):
                if reach[q, p]:
                    assert diff[b, q] > 1e-6, (method, roles[q], "should depend on", roles[p])
                else:
                    assert diff[b, q] < 1e-7, (method, roles[q], "must not depend on", roles[p])


@pytest.mark.parametrize("method", METHODS)
def test_named_mask_properties(method):
    """The specific properties, stated directly (a readable subset of the exhaustive test above)."""
    model = make_model(rel_pos=True)
    pair = Pair(source=[10, 11, 12], target=[20, 21, 22, 23])
    other = Pair(source=list(range(30, 42)), target=[24])  # makes row 0 padded
    packer = Packer(method, SPECIAL, corrupt=False)
    batch = packer([pair, other])
    base = forward(model, batch)[0]
    n_src, m = 5, 5
    width = batch.input_ids.shape[1]
    used = n_src + m * (2 if method == "pseudo_masked" else 1)
    assert used < width

    def changed(col):
        b2 = packer([pair, other])
        b2.input_ids[0, col] = 42
        return (forward(model, b2)[0] - base).abs().amax(-1) > 1e-6

    # future real target j does not reach real target i < j nor pseudo i <= j
    for j in range(m):
        ch = changed(n_src + j)
        assert not ch[n_src:n_src + j].any()
        assert ch[n_src + j:n_src + m].all()
        assert not ch[:n_src].any()
        if method == "pseudo_masked":
            assert not ch[n_src + m:n_src + m + j + 1].any()
            assert ch[n_src + m + j + 1:used].all()
    # a pseudo token changes only itself
    if method == "pseudo_masked":
        for i in range(m):
            ch = changed(n_src + m + i)
            assert ch.nonzero().flatten().tolist() == [n_src + m + i]
    # padding changes only itself
    for col in range(used, width):
        assert changed(col).nonzero().flatten().tolist() == [col]
    # a source token changes source and target outputs (not padding)
    ch = changed(2)
    assert ch[:used].all() and not ch[used:].any()


@pytest.mark.parametrize("bins,max_rel", [(32, 128), (64, 256), (16, 32)])
def test_relative_position_bucket_reference(bins, max_rel):
    rel = torch.arange(-300, 301)
    got = relative_position_bucket(rel, bins, max_rel).tolist()
    assert got == [t5_bucket(r, bins, max_rel) for r in rel.tolist()]


def test_rel_pos_mask_is_bias_of_key_minus_query():
    model = make_model(rel_pos=True)
    batch = Packer("pseudo_masked", SPECIAL, corrupt=False)(PAIRS)
    mask = model._attention_mask(batch.key_rank, batch.query_rank, batch.position_ids, batch.position_ids, 0,
                                 torch.float32)
    table = model.rel_pos_bias.weight  # [heads, bins]
    allowed = allowed_matrix(PAIRS, "pseudo_masked", batch.input_ids.shape[1])
    for b in range(len(PAIRS)):
        pos = batch.position_ids[b].tolist()
        for q in range(len(pos)):
            for k in range(len(pos)):
                if allowed[b, 0, q, k]:
                    bucket = t5_bucket(pos[k] - pos[q], 32, 128)
                    torch.testing.assert_close(mask[b, :, q, k], table[:, bucket], atol=0, rtol=0)
                else:
                    assert torch.isneginf(mask[b, :, q, k]).all()


# ---------------------------------------------------------------------------------------------------------------
# 3. Training view == decoding view
# ---------------------------------------------------------------------------------------------------------------
def decode_step_batch(pairs, step, method):
    """Hand-built decoding-time input for target ``step``: padded [CLS] src [SEP] block, then the real targets
    before ``step`` and the query token (a [MASK] with pseudo ranks, or for causal the last input token).

    Ranks follow model.attention_allowed's documented encoding: source (0, 0), padding (NEVER, -1),
    real target j (j+1, j+1), prediction [MASK] for step i (NEVER, i).
    """
    w_src = max(n_src_of(p) for p in pairs)
    cols = {k: [] for k in ("ids", "pos", "seg", "kr", "qr")}
    for pair in pairs:
        n_src, target = n_src_of(pair), target_of(pair)
        ids = [CLS, *pair.source, SEP] + [PAD] * (w_src - n_src)
        pos = list(range(n_src)) + [0] * (w_src - n_src)
        seg = [0] * w_src
        kr = [0] * n_src + [NEVER_VISIBLE] * (w_src - n_src)
        qr = [0] * n_src + [-1] * (w_src - n_src)
        padded_target = target + [SEP] * (step + 1)  # rows already finished: anything, they are not compared
        if method == "causal":
            inputs = [SPECIAL.start, *padded_target][:step + 1]
            ids += inputs
            pos += [n_src + j for j in range(step + 1)]
            kr += [j + 1 for j in range(step + 1)]
            qr += [j + 1 for j in range(step + 1)]
            seg += [1] * (step + 1)
        else:
            ids += padded_target[:step] + [MASK]
            pos += [n_src + j for j in range(step + 1)]
            kr += [j + 1 for j in range(step)] + [NEVER_VISIBLE]
            qr += [j + 1 for j in range(step)] + [step]
            seg += [1] * (step + 1)
        for k, v in zip(cols, (ids, pos, seg, kr, qr)):
            cols[k].append(v)
    t = {k: torch.tensor(v) for k, v in cols.items()}
    return dict(input_ids=t["ids"], position_ids=t["pos"], token_type_ids=t["seg"], key_rank=t["kr"],
                query_rank=t["qr"])


def train_column(pair, method, step):
    n_src, m = n_src_of(pair), len(target_of(pair))
    return n_src + m + step if method == "pseudo_masked" else n_src + step


@pytest.mark.parametrize("method", ["causal", "pseudo_masked"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
def test_training_equals_decoding(tiny_model, method, batched):
    groups = [PAIRS] if batched else [[p] for p in PAIRS]
    for pairs in groups:
        batch = Packer(method, SPECIAL, corrupt=False)(pairs)
        hidden = forward(tiny_model, batch)
        logits = tiny_model.head(hidden)
        for step in range(max(len(target_of(p)) for p in pairs)):
            with torch.no_grad():
                dec = tiny_model(**decode_step_batch(pairs, step, method))[:, -1]
                dec_logits = tiny_model.head(dec)
            for b, pair in enumerate(pairs):
                if step >= len(target_of(pair)):
                    continue
                col = train_column(pair, method, step)
                assert batch.labels[b, col] == target_of(pair)[step]
                torch.testing.assert_close(dec[b], hidden[b, col], atol=TOL, rtol=0)
                torch.testing.assert_close(dec_logits[b], logits[b, col], atol=TOL, rtol=0)


def test_masked_training_equals_decoding(tiny_model):
    """masked: the first chosen position sees only real targets before it, like a decoding step."""
    pair = PAIRS[0]
    n_src, m = n_src_of(pair), len(target_of(pair))
    packer = Packer("masked", SPECIAL, target_mask_prob=0.01, corrupt=False)  # one position per sample
    seen = set()
    for seed in range(200):
        batch = packer([pair, PAIRS[1]], torch.Generator().manual_seed(seed))
        chosen = (batch.labels[0] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(chosen) == 1
        step = chosen[0] - n_src
        if step in seen:
            continue
        seen.add(step)
        hidden = forward(tiny_model, batch)
        with torch.no_grad():
            dec = tiny_model(**decode_step_batch([pair, PAIRS[1]], step, "masked"))[0, -1]
        assert batch.input_ids[0, n_src + step] == MASK
        torch.testing.assert_close(dec, hidden[0, n_src + step], atol=TOL, rtol=0)
        if len(seen) == m:
            break
    assert seen == set(range(m))


# ---------------------------------------------------------------------------------------------------------------
# 4. KV cache
# ---------------------------------------------------------------------------------------------------------------
def _steps_inputs(pairs, step, mode):
    """Inputs fed at decoding ``step`` for each row (rows already finished feed [SEP]s, never compared)."""
    ids, pos, kr, qr = [], [], [], []
    for pair in pairs:
        n_src, target = n_src_of(pair), target_of(pair) + [SEP] * 32
        if mode == "causal":
            ids.append([([SPECIAL.start] + target)[step]])
            pos.append([n_src + step])
            kr.append([step + 1])
            qr.append([step + 1])
        elif step == 0:
            ids.append([MASK]); pos.append([n_src]); kr.append([NEVER_VISIBLE]); qr.append([0])
        else:
            ids.append([target[step - 1], MASK])
            pos.append([n_src + step - 1, n_src + step])
            kr.append([step, NEVER_VISIBLE])
            qr.append([step, step])
    t = lambda x: torch.tensor(x)
    return dict(input_ids=t(ids), position_ids=t(pos), token_type_ids=torch.ones_like(t(ids)),
                key_rank=t(kr), query_rank=t(qr))


def _reference(model, pairs, mode):
    method = "causal" if mode == "causal" else "pseudo_masked"
    batch = Packer(method, SPECIAL, corrupt=False)(pairs)
    return forward(model, batch)


def _check_step(ref, pairs, mode, step, out):
    for b, pair in enumerate(pairs):
        m = len(target_of(pair))
        if step >= m:
            continue
        n_src = n_src_of(pair)
        if mode == "causal":
            torch.testing.assert_close(out[b, 0], ref[b, n_src + step], atol=TOL, rtol=0)
        else:
            torch.testing.assert_close(out[b, -1], ref[b, n_src + m + step], atol=TOL, rtol=0)  # the [MASK]
            if step > 0:  # the real token stored in the cache
                torch.testing.assert_close(out[b, 0], ref[b, n_src + step - 1], atol=TOL, rtol=0)


def _encode(model, pairs, extra):
    prefix = decoding_prefix([p.source for p in pairs], SPECIAL)
    cache = KVCache(model.config, len(pairs), prefix.input_ids.shape[1] + extra)
    with torch.no_grad():
        enc = model(**prefix.model_inputs(), cache=cache)
    return prefix, cache, enc


@pytest.mark.parametrize("mode", ["causal", "pseudo"])
def test_kv_cache_matches_full_forward(tiny_model, mode):
    ref = _reference(tiny_model, PAIRS, mode)
    steps = max(len(target_of(p)) for p in PAIRS)
    prefix, cache, enc = _encode(tiny_model, PAIRS, steps + 1)
    for b, pair in enumerate(PAIRS):  # the encoded source equals the source part of the training pass
        n_src = n_src_of(pair)
        torch.testing.assert_close(enc[b, :n_src], ref[b, :n_src], atol=TOL, rtol=0)
    for step in range(steps):
        with torch.no_grad():
            out = tiny_model(**_steps_inputs(PAIRS, step, mode), cache=cache,
                             n_store=None if mode == "causal" else (0 if step == 0 else 1))
        _check_step(ref, PAIRS, mode, step, out)
        # invariant: nothing past the stored tokens is visible (the [MASK] query was not kept)
        assert cache.key_rank[:, cache.length:].eq(NEVER_VISIBLE).all()
    assert cache.length == prefix.input_ids.shape[1] + (steps if mode == "causal" else steps - 1)


@pytest.mark.parametrize("mode", ["causal", "pseudo"])
def test_kv_cache_reorder(tiny_model, mode):
    steps = max(len(target_of(p)) for p in PAIRS)
    prefix, cache, _ = _encode(tiny_model, PAIRS, steps + 1)
    n_store = lambda step: None if mode == "causal" else (0 if step == 0 else 1)
    pairs = list(PAIRS)
    perm = [2, 0, 1]
    for step in range(steps):
        if step == 2:  # follow a permutation of the beams
            cache.reorder(torch.tensor(perm))
            pairs = [pairs[i] for i in perm]
        if step == 3:  # drop a finished row: the batch shrinks
            keep = [0, 2]
            cache.reorder(torch.tensor(keep))
            pairs = [pairs[i] for i in keep]
        ref = _reference(tiny_model, pairs, mode)
        with torch.no_grad():
            out = tiny_model(**_steps_inputs(pairs, step, mode), cache=cache, n_store=n_store(step))
        _check_step(ref, pairs, mode, step, out)


# ---------------------------------------------------------------------------------------------------------------
# 5. Loss
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_seq2seq_loss_formula(eps):
    model = make_model()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 32, generator=g)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[0, 4], labels[1, 0] = 7, 2, 33
    got = seq2seq_loss(model, hidden, labels, label_smoothing=eps)
    terms = []
    with torch.no_grad():
        for b, t in [(0, 1), (0, 4), (1, 0)]:
            z = model.head(hidden[b, t]).double()
            logp = z - torch.logsumexp(z, 0)
            nll = -logp[labels[b, t]]
            uniform = -logp.mean()
            terms.append((1 - eps) * nll + eps * uniform)
    expected = sum(terms) / len(terms)
    assert abs(got.item() - expected.item()) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# 6. Over-fitting
# ---------------------------------------------------------------------------------------------------------------
OVERFIT_SPECIAL = SpecialIds(cls=1, sep=2, mask=3, pad=0, vocab_size=30)


def _overfit_pairs():
    g = torch.Generator().manual_seed(1234)
    pairs = []
    for _ in range(8):
        n_s = int(torch.randint(3, 7, (), generator=g))
        n_t = int(torch.randint(2, 6, (), generator=g))
        pairs.append(Pair(torch.randint(4, 30, (n_s,), generator=g).tolist(),
                          torch.randint(4, 30, (n_t,), generator=g).tolist()))
    return pairs


@pytest.mark.parametrize("method", METHODS)
def test_overfit_eight_pairs(method):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=30, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model = UnifiedTransformer(config)
    # Corruption on. ``masked`` predicts only round(ratio * m) tokens per pair; at the 0.2 default that is ~1 of
    # the 8 pairs' ~35 target tokens per pair and step, which needs ~400 steps with or without corruption (measured:
    # a gradient-signal effect, not a corruption bug), so it trains at 0.5 to stay well inside the step budget.
    packer = Packer(method, OVERFIT_SPECIAL, target_mask_prob=0.5 if method == "masked" else 0.2)
    pairs = _overfit_pairs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            losses = [seq2seq_loss(model, model(**b.model_inputs()), b.labels, label_smoothing=0.0).item()
                      for b in (packer(pairs, torch.Generator().manual_seed(10_000 + s)) for s in range(8))]
        model.train()
        return sum(losses) / len(losses)

    final = math.inf
    for step in range(1, 401):
        batch = packer(pairs, g)
        loss = seq2seq_loss(model, model(**batch.model_inputs()), batch.labels, label_smoothing=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            final = eval_loss()
            if final < 0.1:
                break
    assert final < 0.1, f"{method}: loss {final:.3f} after {step} steps"


@pytest.mark.parametrize("mode", ["causal", "pseudo"])
def test_kv_cache_beams_as_tokens_of_one_sequence(tiny_model, mode):
    """Beam search's cache layout: a sentence's beams are tokens of one cached sequence (its source once, then the
    beams' tokens side by side), each beam restricted by ``visible`` to the source and its own columns. Every
    beam's outputs equal the full forward of its own sequence, also after a beam takes over another's columns (no
    copy) and after a finished sentence's cache row leaves."""
    sources = [[10, 11, 12], [13, 14, 15, 16, 17, 18]]  # unequal lengths: the source part is padded
    beams = [Pair(sources[0], [20, 21, 22, 23]), Pair(sources[0], [24, 25, 26, 27]),
             Pair(sources[1], [28, 29, 30, 31]), Pair(sources[1], [32, 33, 34, 35])]
    k = 2  # beams per sentence
    prefix, cache, _ = _encode(tiny_model, [Pair(source, []) for source in sources], 5 * 2 * k)
    follows = list(range(len(beams)))  # which pair each row's history is
    columns = [list(range(prefix.input_ids.shape[1])) for _ in beams]  # each row's columns in its sentence's row
    for step in range(5):
        if step == 2:  # sentence 0: both rows follow pair 1 (pair 0 dies); sentence 1: its rows swap
            order = [1, 1, 3, 2]
            follows, columns = [follows[i] for i in order], [list(columns[i]) for i in order]
        if step == 4:  # sentence 0 is done: its cache row leaves
            cache.reorder(torch.tensor([1]))
            follows, columns = follows[k:], columns[k:]
        pairs = [beams[i] for i in follows]
        inputs = _steps_inputs(pairs, step, mode)
        n, sentences, start = inputs["input_ids"].shape[1], len(pairs) // k, cache.length
        n_store = n if mode == "causal" else (0 if step == 0 else 1)
        new = [[start + i * k + row % k for i in range(n)] for row in range(len(pairs))]
        visible = torch.zeros(sentences, n * k, start + n * k, dtype=torch.bool)
        for row in range(len(pairs)):
            for i in range(n):
                visible[row // k, i * k + row % k, columns[row] + new[row]] = True
        side_by_side = {name: value.reshape(sentences, k, n).transpose(1, 2).reshape(sentences, n * k)
                        for name, value in inputs.items()}
        with torch.no_grad():
            out = tiny_model(**side_by_side, cache=cache, n_store=n_store * k, visible=visible)
        out = out.view(sentences, n, k, -1).transpose(1, 2).reshape(len(pairs), n, -1)
        _check_step(_reference(tiny_model, pairs, mode), pairs, mode, step, out)
        columns = [old + new[row][:n_store] for row, old in enumerate(columns)]


@pytest.mark.parametrize("mode", ["causal", "pseudo"])
def test_n_out_keeps_the_last_tokens_and_caches_all(tiny_model, mode):
    """``n_out`` returns the last tokens' hidden states unchanged, and the cache it leaves serves later steps as
    well as a full forward's."""
    caches = [_encode(tiny_model, PAIRS, 8)[1] for _ in range(2)]
    n_store = lambda step: None if mode == "causal" else (0 if step == 0 else 1)
    for step in range(3):
        inputs = _steps_inputs(PAIRS, step, mode)
        with torch.no_grad():
            full = tiny_model(**inputs, cache=caches[0], n_store=n_store(step))
            last = tiny_model(**inputs, cache=caches[1], n_store=n_store(step), n_out=1)
        assert last.shape[1] == 1
        torch.testing.assert_close(last, full[:, -1:], atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# 6. What F.scaled_dot_product_attention receives: no mask when nothing is masked (flash kernels), else boolean
# ---------------------------------------------------------------------------------------------------------------
def _sdpa_masks(model, inputs, **kwargs):
    """The attn_mask of every SDPA call in one forward, and the forward's output."""
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kw):
        seen.append(kw.get("attn_mask"))
        return sdpa(*args, **kw)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        out = model(**inputs, **kwargs)
    return seen, out


MASK_CASES = {
    "equal-length-sources": lambda: decoding_prefix([[10, 11, 12], [13, 14, 15]], SPECIAL).model_inputs(),
    "one-source": lambda: decoding_prefix([[10, 11]], SPECIAL).model_inputs(),
    "padded-sources": lambda: decoding_prefix([[10, 11, 12], [13]], SPECIAL).model_inputs(),
    **{f"packed-{m}": (lambda m=m: Packer(m, SPECIAL, corrupt=False)(PAIRS[:1]).model_inputs()) for m in METHODS},
}


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_no_mask_exactly_when_nothing_is_masked(case, monkeypatch):
    model = make_model()
    inputs = MASK_CASES[case]()
    all_visible = bool(attention_allowed(inputs["key_rank"], inputs["query_rank"]).all())
    assert all_visible == (case in ("equal-length-sources", "one-source"))
    seen, out = _sdpa_masks(model, inputs)
    assert len(seen) == len(model.layers)
    for mask in seen:
        if all_visible:
            assert mask is None
        else:  # on a CPU additive (0 where allowed, -inf elsewhere), broadcast over heads, contiguous: SDPA's own
            # conversion of a boolean mask, made once per forward instead of once per layer
            assert mask.dtype == out.dtype and mask.shape == (out.shape[0], 1, out.shape[1], out.shape[1])
            assert mask.is_contiguous()
            allowed = attention_allowed(inputs["key_rank"], inputs["query_rank"])
            assert torch.equal(mask == 0, allowed) and bool(torch.isneginf(mask[~allowed]).all())
    # the shortcut changes nothing: the same forward with the (all-True) dense mask forced
    monkeypatch.setattr(model, "_attention_mask", lambda key_rank, query_rank, *rest: attention_allowed(
        key_rank, query_rank, rest[2]))
    _, dense = _sdpa_masks(model, inputs)
    torch.testing.assert_close(out, dense, atol=1e-6, rtol=0)


def test_mask_kept_in_training_and_with_relative_positions():
    inputs = MASK_CASES["equal-length-sources"]()
    seen, _ = _sdpa_masks(make_model().train(), inputs)  # training skips the test (no host sync)
    assert all(mask is not None and mask.dtype == torch.float32 and mask.shape[1] == 1 for mask in seen)
    seen, _ = _sdpa_masks(make_model(rel_pos=True), inputs)  # the bias is the mask, additive
    assert all(mask.dtype == torch.float32 and mask.shape[1] == 4 for mask in seen)


def test_decoding_shortcut_with_cache():
    """Encoding equal-length sources and the first step (a [MASK] that reads the source) go maskless; the second
    step keeps its mask (the real token may not see the new [MASK])."""
    model = make_model()
    prefix = decoding_prefix([[10, 11, 12], [13, 14, 15]], SPECIAL)
    cache = KVCache(model.config, 2, 12)
    pairs = [Pair([10, 11, 12], [20]), Pair([13, 14, 15], [21])]
    for inputs, n_store, maskless in ((prefix.model_inputs(), None, True), (_steps_inputs(pairs, 0, "pseudo"), 0, True),
                                      (_steps_inputs(pairs, 1, "pseudo"), 1, False)):
        seen, _ = _sdpa_masks(model, inputs, cache=cache, n_store=n_store)
        assert [mask is None for mask in seen] == [maskless] * len(model.layers)


def test_position_beyond_the_table_is_named():
    model = make_model()
    inputs = decoding_prefix([[10, 11, 12]], SPECIAL).model_inputs()
    inputs["position_ids"] = inputs["position_ids"] + model.config.max_position_embeddings - 2
    with pytest.raises(ValueError, match="exceeds the position table"):
        model(**inputs)
