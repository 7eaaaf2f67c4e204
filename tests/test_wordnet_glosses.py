"""The WordNet definition-generation dataset (examples/wordnet_glosses.py, the quickstart's data), on a small fake
WordNet directory (no wordnet-base needed)."""
import json
import os

import pytest
from conftest import load_script

wg = load_script("examples", "wordnet_glosses")

LICENCE = [
    "  1 This software and database is being provided to you, the LICENSEE, by  \n",
    "  2 Princeton University under the following license.  By obtaining, using  \n",
    "  3   \n",
]


def data_line(offset, lex_filenum, ss_type, words, gloss, pointers=(), frames=None):
    """One line in the real ``data.*`` format: hex w_cnt and lex_id, 3-digit p_cnt, `` | gloss``."""
    parts = [f"{offset:08d}", f"{lex_filenum:02d}", ss_type, f"{len(words):02x}"]
    for word, lex_id in words:
        parts += [word, f"{lex_id:x}"]
    parts.append(f"{len(pointers):03d}")
    for symbol, target, pos in pointers:
        parts += [symbol, f"{target:08d}", pos, "0000"]
    if frames is not None:
        parts.append(f"{len(frames):02d}")
        for frame in frames:
            parts += ["+", f"{frame:02d}", "00"]
    return " ".join(parts) + " | " + gloss + "  \n"


# A few lemmas with several senses, a multiword first lemma, a capitalised one, and 30 filler nouns so that
# both splits get lemmas.
NOUNS = [
    data_line(2084071, 5, "n", [("dog", 0), ("domestic_dog", 0), ("Canis_familiaris", 0)],
              'a member of the genus Canis; occurs in many breeds; "the dog barked all night"',
              pointers=[("@", 2083346, "n"), ("~", 1322604, "n")]),
    data_line(10114209, 18, "n", [("dog", 1), ("frump", 0)],
              'a dull unattractive unpleasant girl or woman; "she got a reputation as a frump"'),
    data_line(7676602, 13, "n", [("hot_dog", 0), ("red_hot", 0), ("dog", 2)],
              'a smooth-textured sausage of minced beef or pork usually smoked; "a hot dog"'),
    data_line(9044862, 15, "n", [("Dog", 0)], "the eleventh sign of the Chinese zodiac"),
    data_line(9000001, 15, "n", [("cat", 0), ("true_cat", 0)],
              "feline mammal usually having thick soft fur and no ability to roar"),
    data_line(9000002, 15, "n", [("quote", 0)], '"only an example, no definition"'),
] + [
    data_line(9100000 + i, 6, "n", [(f"filler{chr(97 + i % 26)}{chr(97 + i // 26)}", 0)],
              f"filler definition number {i}; \"an example {i}\"")
    for i in range(30)
]
VERBS = [
    data_line(2005948, 38, "v", [("dog", 0), ("chase", 0), ("chase_after", 0), ("trail", 1), ("tail", 1)],
              'go after with the intent to catch; "The policeman chased the mugger down the alley"',
              pointers=[("@", 2001858, "v")], frames=[8, 11]),
    data_line(1999999, 38, "v", [("tag_along", 0)], "go along with, often uninvited", frames=[2]),
]


@pytest.fixture
def fake_wordnet(tmp_path):
    wn = tmp_path / "wordnet"
    wn.mkdir()
    (wn / "data.noun").write_text("".join(LICENCE + NOUNS), encoding="utf-8")
    (wn / "data.verb").write_text("".join(LICENCE + VERBS), encoding="utf-8")
    return str(wn)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def lemma_of(src):
    return src.rsplit(" (", 1)[0]


def test_parse_data_line_real_format():
    assert wg.parse_data_line(LICENCE[0]) is None
    synset = wg.parse_data_line(NOUNS[0])
    assert synset.offset == 2084071 and synset.lex_filenum == 5 and synset.ss_type == "n"
    assert synset.words == ("dog", "domestic_dog", "Canis_familiaris")
    assert synset.definition == "a member of the genus Canis; occurs in many breeds"
    assert synset.gloss.endswith('"the dog barked all night"')
    # Verb lines carry frames after the pointers; lex_id and w_cnt are hexadecimal.
    verb = wg.parse_data_line(data_line(1, 2, "v", [(f"w{i}", i) for i in range(12)], "x; \"y\"", frames=[1]))
    assert len(verb.words) == 12 and verb.lex_ids[11] == 11 and verb.definition == "x"
    # Adjective syntactic markers are not part of the word.
    adj = wg.parse_data_line(data_line(3, 0, "s", [("galore(ip)", 0)], "in great numbers"))
    assert adj.words == ("galore",) and adj.pos == "adjective"


def test_split_definition():
    assert wg.split_definition('expect and wish; "I hope she understands"; "I am hoping for"') == "expect and wish"
    assert wg.split_definition('painful;"few experiences are more traumatic"') == "painful"
    assert wg.split_definition("no example at all") == "no example at all"
    assert wg.split_definition('"only an example"') == ""


def test_build_default_only_single_common_words(fake_wordnet, tmp_path):
    out = tmp_path / "out"
    stats = wg.build_dataset(str(out), fake_wordnet, dev_percent=50.0)
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "dev.jsonl")
    assert stats["train"] + stats["dev"] == len(rows) > 0
    srcs = {row["src"] for row in rows}
    # dog (noun) has two senses with "dog" first; "Dog", "hot dog" and "tag along" are not single common words.
    assert {"dog (noun)", "dog (verb)", "cat (noun)"} <= srcs
    assert not any("Dog" in s or "hot" in s or "tag" in s or "_" in s for s in srcs)
    # A gloss that is only an example has no definition and is skipped.
    assert "quote (noun)" not in srcs
    for row in rows:
        assert '"' not in row["tgt"] and row["tgt"] == row["tgt"].strip()
        assert row["src"].endswith((" (noun)", " (verb)"))


def test_underscores_become_spaces(fake_wordnet, tmp_path):
    train, dev = wg.build_examples(wg.read_synsets(fake_wordnet), None, dev_percent=0.0, allow_multiword=True)
    assert dev == []
    by_src = {}
    for row in train:
        by_src.setdefault(row["src"], []).append(row["tgt"])
    assert by_src["hot dog (noun)"] == ["a smooth-textured sausage of minced beef or pork usually smoked"]
    assert by_src["tag along (verb)"] == ["go along with, often uninvited"]
    assert not any("_" in src for src in by_src)


def test_dev_refs_hold_every_gloss_of_lemma_and_pos(fake_wordnet):
    train, dev = wg.build_examples(wg.read_synsets(fake_wordnet), None, dev_percent=100.0)
    assert train == []
    dog_noun = next(row for row in dev if row["src"] == "dog (noun)")
    # All three synsets that contain "dog" as a noun (as the third lemma of hot_dog too), not "Dog".
    assert sorted(dog_noun["refs"]) == sorted([
        "a member of the genus Canis; occurs in many breeds",
        "a dull unattractive unpleasant girl or woman",
        "a smooth-textured sausage of minced beef or pork usually smoked",
    ])
    assert dog_noun["tgt"] in dog_noun["refs"]
    assert len({row["src"] for row in dev}) == len(dev)  # one dev line per (lemma, pos)


def test_no_lemma_in_both_splits_and_deterministic(fake_wordnet, tmp_path):
    argv = ["--wordnet_dir", fake_wordnet, "--dev_percent", "50"]
    assert wg.main(["--output_dir", str(tmp_path / "a")] + argv) == 0
    assert wg.main(["--output_dir", str(tmp_path / "b")] + argv) == 0
    for name in ("train.jsonl", "dev.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = read_jsonl(tmp_path / "a" / "train.jsonl")
    dev = read_jsonl(tmp_path / "a" / "dev.jsonl")
    train_lemmas = {lemma_of(row["src"]) for row in train}
    dev_lemmas = {lemma_of(row["src"]) for row in dev}
    assert train_lemmas and dev_lemmas
    assert not train_lemmas & dev_lemmas
    assert all("refs" in row for row in dev) and not any("refs" in row for row in train)
    # The split depends on the lemma alone, so dog (noun) and dog (verb) are always together.
    assert ("dog" in train_lemmas) != ("dog" in dev_lemmas)
    # Atomic writes leave no temporary files behind.
    assert sorted(os.listdir(tmp_path / "a")) == ["dev.jsonl", "train.jsonl"]


def test_limits(fake_wordnet, tmp_path):
    synsets = wg.read_synsets(fake_wordnet)
    train, dev = wg.build_examples(synsets, None, max_train=5, max_dev=2, dev_percent=50.0)
    assert len(train) == 5 and len(dev) == 2
    train, _ = wg.build_examples(synsets, None, dev_percent=0.0, max_senses=1)
    assert [row["src"] for row in train].count("dog (noun)") == 1


def test_sense_counts_filter(fake_wordnet):
    with open(os.path.join(fake_wordnet, "cntlist.rev"), "w") as f:
        f.write("dog%1:05:00:: 1 42\ncat%1:15:00:: 1 3\n")
    counts = wg.read_sense_counts(fake_wordnet)
    train, _ = wg.build_examples(wg.read_synsets(fake_wordnet), counts, dev_percent=0.0)
    # Only the senses tagged at least once survive: dog's first noun sense and cat.
    assert sorted(row["src"] for row in train) == ["cat (noun)", "dog (noun)"]
    assert next(row["tgt"] for row in train if row["src"] == "dog (noun)").startswith("a member of the genus")


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_wordnet_is_one_clear_error(tmp_path, capsys, make_dir):
    missing = tmp_path / "no_wordnet"
    if make_dir:
        missing.mkdir()
    assert wg.main(["--output_dir", str(tmp_path / "out"), "--wordnet_dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: the WordNet definition dataset needs WordNet 3.0, not found in {missing} (expected "
                   "data.noun ...): install it with `apt-get install wordnet-base` (or: bash scripts/setup.sh "
                   "--with-wordnet)\n")
    assert not (tmp_path / "out").exists()
