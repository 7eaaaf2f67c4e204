"""s2s_ft.evaluation.metrics and s2s_ft.cli.evaluate: metric wrappers against hand-computed values, file reading, the CLI,
WordNet for nltk (s2s_ft.evaluation.wordnet).

Nothing here needs the network or ../shared/data. METEOR runs on a tiny fake WordNet built here (so the lexnames
writer and the nltk reader are exercised everywhere); the checks against Debian's real WordNet 3.0 skip cleanly
where ``wordnet-base`` is not installed (CI runs scripts/setup.sh without --with-wordnet).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
from collections import Counter

import pytest

pytest.importorskip("rouge_score")
pytest.importorskip("sacrebleu")
pytest.importorskip("nltk")

from s2s_ft.cli import evaluate
from s2s_ft.evaluation.metrics import score
from s2s_ft.evaluation.wordnet import (
    DEFAULT_WORDNET_DIR,
    LEXNAMES,
    ensure_wordnet,
    has_wordnet,
)

REAL_WORDNET = DEFAULT_WORDNET_DIR  # where Debian's wordnet-base installs it, as the library looks for it
needs_real_wordnet = pytest.mark.skipif(not has_wordnet(REAL_WORDNET),
                                        reason="Debian wordnet-base not installed (apt-get install wordnet-base)")


# -- ROUGE -----------------------------------------------------------------------------------------------------
def test_rouge_by_hand():
    s = score(["the cat sat"], [["the cat ran"]], metrics=("rouge",))
    # unigrams: 2 of 3 match both ways -> F1 2/3; bigrams: "the cat" of {the cat, cat sat} -> 1/2; LCS 2 -> 2/3
    assert s["rouge1"] == pytest.approx(100 * 2 / 3)
    assert s["rouge2"] == pytest.approx(50.0)
    assert s["rougeL"] == pytest.approx(100 * 2 / 3)
    assert s["n"] == 1


def test_rouge_multi_reference_takes_the_best_reference():
    s = score(["a dog ran", "the cat sat"], [["the hound walked", "a dog ran"], ["the cat ran"]], metrics=["rouge"])
    assert s["rouge1"] == pytest.approx((100 + 100 * 2 / 3) / 2)
    assert score(["a dog ran"], [["the hound walked", "a dog ran"]], metrics=["rouge"])["rouge2"] == pytest.approx(100)


# -- BLEU ------------------------------------------------------------------------------------------------------
def test_bleu_identical_is_100():
    s = score(["the cat sat on the mat", "a dog ran in the park today"],
              [["the cat sat on the mat"], ["a dog ran in the park today"]], metrics=["bleu"])
    assert s["bleu"] == pytest.approx(100.0)
    assert s["bleu4_tok"] == pytest.approx(100.0)


def test_bleu_by_hand_with_brevity_penalty():
    # hyp 6 tokens, ref 7: precisions 6/6, 4/5, 3/4, 2/3; BP = exp(1 - 7/6)
    expected = 100 * math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    s = score(["the cat sat on the mat"], [["the cat sat on the red mat"]], metrics=["bleu"])
    assert s["bleu"] == pytest.approx(expected)
    assert s["bleu4_tok"] == pytest.approx(expected)
    assert expected == pytest.approx(67.3182, abs=1e-4)


def formula_bleu(hyps, refs, nltk_short_hypothesis_quirk=False):
    """Corpus BLEU-4 written from Papineni et al.: clipped counts (max over refs), closest reference length.

    With ``nltk_short_hypothesis_quirk`` a hypothesis shorter than n counts as one n-gram (nltk's
    ``modified_precision`` divides by ``max(1, count)`` and ``corpus_bleu`` sums those denominators).
    """
    matches, totals, c, r = [0] * 4, [0] * 4, 0, 0
    for hyp, sentence_refs in zip(hyps, refs):
        h = hyp.split()
        rs = [x.split() for x in sentence_refs]
        c += len(h)
        r += min((abs(len(x) - len(h)), len(x)) for x in rs)[1]
        for n in range(1, 5):
            grams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            best = Counter()
            for x in rs:
                best |= Counter(tuple(x[i:i + n]) for i in range(len(x) - n + 1))
            matches[n - 1] += sum(min(k, best[g]) for g, k in grams.items())
            totals[n - 1] += max(len(h) - n + 1, 1 if nltk_short_hypothesis_quirk else 0)
    assert all(matches), "the formula has no smoothing: pick examples with matches at every order"
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def test_bleu_ragged_multi_reference_matches_the_formula():
    hyps = ["x y", "the cat sat on the mat", "a b c d e"]
    refs = [["x y z w v u"],  # one reference
            ["the cat sat on the red mat", "a cat sat on a mat", "the cat is on the mat"],  # three
            ["a b c d e f", "a b c d"]]  # two
    expected = formula_bleu(hyps, refs)
    s = score(hyps, refs, metrics=["bleu"])
    assert s["bleu"] == pytest.approx(expected)
    # nltk (bleu4_tok) differs only through "x y", shorter than 3 and 4 tokens (see the module docstring) ...
    assert s["bleu4_tok"] == pytest.approx(formula_bleu(hyps, refs, nltk_short_hypothesis_quirk=True))
    assert s["bleu4_tok"] < expected
    # ... and agrees without it.
    assert score(hyps[1:], refs[1:], metrics=["bleu"])["bleu4_tok"] == pytest.approx(formula_bleu(hyps[1:], refs[1:]))
    # The padding matters: an empty string would be a zero-length reference ("x y" would look long enough).
    import sacrebleu

    streams = evaluate.reference_streams(refs)
    assert streams == [["x y z w v u", "the cat sat on the red mat", "a b c d e f"],
                       [None, "a cat sat on a mat", "a b c d"], [None, "the cat is on the mat", None]]
    padded_with_empty = [[x if x is not None else "" for x in stream] for stream in streams]
    assert sacrebleu.corpus_bleu(hyps, padded_with_empty).score != pytest.approx(expected)


def test_lowercase_only_changes_case_sensitive_bleu():
    hyps, refs = ["The Cat sat on the mat"], [["the cat sat on the mat"]]
    cased, lowered = score(hyps, refs, ["rouge", "bleu"]), score(hyps, refs, ["rouge", "bleu"], lowercase=True)
    assert cased["bleu"] < 100 and lowered["bleu"] == pytest.approx(100)
    assert cased["bleu4_tok"] == lowered["bleu4_tok"] == pytest.approx(100)  # lowercased by definition
    assert cased["rouge1"] == lowered["rouge1"] == pytest.approx(100)


def test_score_rejects_bad_arguments():
    with pytest.raises(evaluate.UsageError, match="unknown metric"):
        score(["a"], [["a"]], metrics=["cider"])
    with pytest.raises(evaluate.DataError, match="2 hypotheses but 1"):
        score(["a", "b"], [["a"]], metrics=["rouge"])
    assert score(["a b c d"], ["a b c d"], metrics=["bleu"])["bleu"] == pytest.approx(100)  # bare strings


# -- a tiny WordNet for nltk (offsets are byte positions, as in the real database) ---------------------------
def make_fake_wordnet(directory):
    directory.mkdir(parents=True, exist_ok=True)
    header = "  1 A fake WordNet database for tests.  \n"
    synsets = [(5, ["dog", "hound"], "a domesticated canid"), (6, ["car", "automobile"], "a motor vehicle")]
    data, index = header, []
    for lex_filenum, words, gloss in synsets:
        offset = len(data.encode())
        data += (f"{offset:08d} {lex_filenum:02d} n {len(words):02x} " + " ".join(f"{w} 0" for w in words)
                 + f" 000 | {gloss}  \n")
        index += [f"{w} n 1 0 1 0 {offset:08d}  \n" for w in words]
    (directory / "data.noun").write_text(data)
    (directory / "index.noun").write_text("".join(sorted(index)))
    for pos in ("verb", "adj", "adv"):
        (directory / f"data.{pos}").write_text(header)
        (directory / f"index.{pos}").write_text("")
    for pos in ("noun", "verb", "adj", "adv"):
        (directory / f"{pos}.exc").write_text("")
    (directory / "bin").mkdir()  # like Debian's bin/, pixmaps/: not copied
    return str(directory)


@pytest.fixture
def nltk_path(monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    return nltk.data.path


def test_ensure_wordnet_copies_and_writes_lexnames(tmp_path, nltk_path):
    source = make_fake_wordnet(tmp_path / "wn")
    target = ensure_wordnet(str(tmp_path / "nltk_data"), source)
    assert target == str(tmp_path / "nltk_data" / "corpora" / "wordnet")
    assert sorted(os.listdir(target)) == sorted(["lexnames"] + [n for n in os.listdir(source) if n != "bin"])
    lines = open(os.path.join(target, "lexnames")).read().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[1] == "01\tadj.pert\t3" and lines[2] == "02\tadv.all\t4"
    assert lines[3] == "03\tnoun.Tops\t1" and lines[4] == "04\tnoun.act\t1" and lines[5] == "05\tnoun.animal\t1"
    assert lines[28] == "28\tnoun.time\t1" and lines[29] == "29\tverb.body\t2" and lines[43] == "43\tverb.weather\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    pos_number = {"noun": "1", "verb": "2", "adj": "3", "adv": "4"}
    for number, line in enumerate(lines):
        index, name, category = line.split("\t")
        assert index == f"{number:02d}" and category == pos_number[name.split(".")[0]]
    assert nltk_path[0] == str(tmp_path / "nltk_data")
    # idempotent, and a changed source file is copied again
    assert ensure_wordnet(str(tmp_path / "nltk_data"), source) == target
    (tmp_path / "wn" / "noun.exc").write_text("dogs dog\n")
    ensure_wordnet(str(tmp_path / "nltk_data"), source)
    assert open(os.path.join(target, "noun.exc")).read() == "dogs dog\n"
    assert nltk_path.count(str(tmp_path / "nltk_data")) == 1


def test_ensure_wordnet_honours_the_environment(tmp_path, monkeypatch, nltk_path):
    monkeypatch.setenv("S2S_FT_NLTK_DATA", str(tmp_path / "from-env"))
    target = ensure_wordnet(wordnet_dir=make_fake_wordnet(tmp_path / "wn"))
    assert target == str(tmp_path / "from-env" / "corpora" / "wordnet")


def test_fake_wordnet_reads_through_nltk(tmp_path, nltk_path):
    reader = evaluate.wordnet_reader(ensure_wordnet(str(tmp_path / "nd"), make_fake_wordnet(tmp_path / "wn")))
    (synset,) = reader.synsets("hound")
    assert synset.lemma_names() == ["dog", "hound"] and synset.lexname() == "noun.animal"
    assert reader.synsets("automobile")[0].lexname() == "noun.artifact"


def meteor_by_hand(matches, chunks, hyp_len, ref_len, alpha=0.9, beta=3.0, gamma=0.5):
    precision, recall = matches / hyp_len, matches / ref_len
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    return 100 * fmean * (1 - gamma * (chunks / matches) ** beta)


def test_meteor_with_wordnet_synonyms(tmp_path, nltk_path):
    kwargs = dict(metrics=["meteor"], nltk_data_dir=str(tmp_path / "nd"), wordnet_dir=make_fake_wordnet(tmp_path / "wn"))
    exact = score(["the dog ran"], [["the dog ran"]], **kwargs)["meteor"]
    assert exact == pytest.approx(meteor_by_hand(3, 1, 3, 3))  # 1 - 0.5 / 27
    assert score(["the hound ran"], [["the dog ran"]], **kwargs)["meteor"] == pytest.approx(exact)  # synonym
    assert score(["the cur ran"], [["the dog ran"]], **kwargs)["meteor"] == pytest.approx(meteor_by_hand(2, 2, 3, 3))
    # multi-reference: the best reference counts; a long exact match approaches 100
    assert score(["the cur ran"], [["a b c", "the cur ran"]], **kwargs)["meteor"] == pytest.approx(exact)
    long = "one two three four five six seven eight nine ten eleven twelve"
    assert score([long], [[long]], **kwargs)["meteor"] == pytest.approx(100 * (1 - 0.5 / 12 ** 3))


def test_meteor_without_wordnet_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(evaluate.WordNetMissing, match=r"apt-get install wordnet-base"):
        score(["a"], [["a"]], metrics=["meteor"], nltk_data_dir=str(tmp_path / "nd"), wordnet_dir=str(tmp_path))
    hyp, ref = tmp_path / "h.txt", tmp_path / "r.txt"
    hyp.write_text("a\n")
    ref.write_text("a\n")
    assert evaluate.main(["--hyp", str(hyp), "--ref", str(ref), "--metrics", "meteor",
                          "--wordnet_dir", str(tmp_path / "none"), "--nltk_data", str(tmp_path / "nd")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wordnet-base" in err and "setup.sh --with-wordnet" in err


# -- the real WordNet 3.0 (Debian wordnet-base) -----------------------------------------------------------------
@needs_real_wordnet
def test_lexnames_agree_with_the_real_wordnet():
    man_page = "/usr/share/man/man5/lexnames.5WN.gz"
    if os.path.isfile(man_page):
        with gzip.open(man_page, "rt") as handle:
            rows = re.findall(r"^(\d\d)\t(\S+)\s*\t", handle.read(), re.M)
        assert [(int(n), name) for n, name in rows] == [(i, name) for i, (name, _) in enumerate(LEXNAMES)]
    category = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    for pos in category:
        used = set()
        with open(os.path.join(REAL_WORDNET, f"data.{pos}")) as handle:
            for line in handle:
                if not line.startswith("  "):
                    used.add(int(line.split(" ", 2)[1]))
        for number in used:  # every synset's lexicographer file has the data file's part of speech
            name, cat = LEXNAMES[number]
            assert name.split(".")[0] == pos and cat == category[pos], (pos, number, name)
        assert len(used) == sum(1 for name, _ in LEXNAMES if name.startswith(pos + "."))


@needs_real_wordnet
def test_meteor_with_the_real_wordnet(tmp_path, nltk_path):
    target = ensure_wordnet(str(tmp_path / "nd"))
    reader = evaluate.wordnet_reader(target)
    assert reader.synset("dog.n.01").lexname() == "noun.animal"
    assert reader.synset("run.v.01").lexname() == "verb.motion"
    kwargs = dict(metrics=["meteor"], nltk_data_dir=str(tmp_path / "nd"))
    assert score(["the auto stopped"], [["the car stopped"]], **kwargs)["meteor"] == pytest.approx(
        meteor_by_hand(3, 1, 3, 3))  # auto and car share car.n.01
    # nltk looks synonyms up for the Porter *stems* of words left after exact and stem matching
    # ("automobile" -> "automobil", not in WordNet), so this synonym is missed:
    assert score(["the automobile stopped"], [["the car stopped"]], **kwargs)["meteor"] == pytest.approx(
        meteor_by_hand(2, 2, 3, 3))


# -- files and the CLI -----------------------------------------------------------------------------------------
def test_read_references_jsonl_and_text(tmp_path):
    jsonl = tmp_path / "ref.jsonl"
    jsonl.write_text(json.dumps({"src": "x", "tgt": ["who", "wrote", "##s", "it", "?"]}) + "\n\n"
                     + json.dumps({"src": "y", "tgt": "a", "refs": ["a", ["b", "##c"]]}) + "\n")
    assert evaluate.read_references(str(jsonl)) == [["who wrotes it ?"], ["a", "bc"]]
    text = tmp_path / "ref.txt"
    text.write_text("one ref\n\nthird\n")
    assert evaluate.read_references(str(text)) == [["one ref"], [""], ["third"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"src": "x", "tgt": 3}) + "\n")
    with pytest.raises(evaluate.DataError, match=r"bad.jsonl:1: \"tgt\" must be a string"):
        evaluate.read_references(str(bad))


def test_read_dev_examples_reads_only_the_sample(tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"src": "x y", "tgt": "a"}) + "\n\n"
                   + json.dumps({"src": ["x", "##y"], "refs": ["a", ["b", "##c"]]}) + "\n"
                   + "not json\n")
    sources, refs, numbers = evaluate.read_dev_examples(str(dev), 2)  # line 4 is never read
    assert (sources, refs, numbers) == (["x y", ["x", "##y"]], [["a"], ["a", "bc"]], [1, 3])
    with pytest.raises(evaluate.DataError, match=r"dev.jsonl:4: malformed JSON"):
        evaluate.read_dev_examples(str(dev))
    dev.write_text(json.dumps({"tgt": "a"}) + "\n")
    with pytest.raises(evaluate.DataError, match=r"dev.jsonl:1: missing \"src\""):
        evaluate.read_dev_examples(str(dev))


def test_metric_keys_are_what_score_returns():
    for family, keys in evaluate.SCORES.items():
        if family not in ("meteor", "coco"):  # need WordNet / a JVM: their keys are checked in their own tests
            assert set(score(["a b"], [["a b"]], metrics=[family])) == set(keys) | {"n"}
        assert all(evaluate.metric_family(key) == family for key in keys)


def _coco_or_skip():
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("no java: METEOR 1.5 runs a jar")


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_coco_scores_match_nltk_bleu_and_a_by_hand_rouge_l():
    """The papers' coco-caption scorers: BLEU-4 agrees with nltk's (every hypothesis has 4+ tokens, so the two
    formulas meet), ROUGE-L is the beta-1.2 F of the best LCS precision and recall over the references
    (recomputed here by hand), and METEOR 1.5 ranks an exact copy above a half-right question."""
    _coco_or_skip()
    hyps = ["What year did the war End ?", "who wrote the book about cats ?", "where is the river"]
    refs = [["in what year did the war end ?", "when did the war end ?"], ["who wrote the cat book ?"],
            ["where does the river flow ?", "where is the river located ?"]]
    result = score(hyps, refs, metrics=["coco", "bleu"])
    assert set(result) >= set(evaluate.SCORES["coco"])
    assert result["bleu4_coco"] == pytest.approx(result["bleu4_tok"], abs=1e-3)
    beta, total = 1.2, 0.0
    for hyp, sentence_refs in zip(hyps, refs):
        h = hyp.lower().split()
        lcs = [_lcs(h, r.split()) for r in sentence_refs]
        precision = max(x / len(h) for x in lcs)
        recall = max(x / len(r.split()) for x, r in zip(lcs, sentence_refs))
        total += (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision) if precision and recall else 0
    assert result["rougeL_coco"] == pytest.approx(100 * total / len(hyps), abs=1e-6)
    exact = score([refs[0][0]], [refs[0]], metrics=["coco"])["meteor_coco"]
    partial = score(["what year did the war end ?"], [["when was the treaty signed ?"]], metrics=["coco"])
    assert 90 < exact <= 100 and partial["meteor_coco"] < exact


def test_coco_without_the_package_is_one_clear_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(evaluate.UsageError, match=r"pycocoevalcap: pip install"):
        score(["a"], [["a"]], metrics=["coco"])


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_cli_mismatched_line_counts(tmp_path, capsys):
    hyp = write(tmp_path / "dev.pred", ["a", "b"])
    ref = write(tmp_path / "dev.jsonl", [json.dumps({"tgt": t}) for t in "abc"])
    assert evaluate.main(["--hyp", hyp, "--ref", ref, "--metrics", "rouge"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert hyp in err and ref in err and "has 2 hypotheses" in err and "has 3 references" in err
    assert captured.out == ""


def test_cli_table_and_json(tmp_path, capsys):
    hyp = write(tmp_path / "dev.pred", ["the cat sat", "a dog ran"])
    ref = write(tmp_path / "dev.jsonl", [json.dumps({"src": "s", "tgt": "the cat ran"}),
                                         json.dumps({"src": "s", "tgt": "x", "refs": ["the hound walked", "a dog ran"]})])
    out = tmp_path / "scores" / "dev.json"
    assert evaluate.main(["--hyp", hyp, "--ref", ref, "--metrics", "rouge,bleu", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written) == {"rouge1", "rouge2", "rougeL", "bleu", "bleu4_tok", "n"} and written["n"] == 2
    assert written == pytest.approx(score(["the cat sat", "a dog ran"],
                                          [["the cat ran"], ["the hound walked", "a dog ran"]], ["rouge", "bleu"]))
    assert written["rouge1"] == pytest.approx((100 * 2 / 3 + 100) / 2)
    table = capsys.readouterr().out
    assert re.search(r"^rouge1\s+83\.33$", table, re.M) and re.search(r"^n\s+2$", table, re.M)
