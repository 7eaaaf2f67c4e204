"""Answer-aware SQuAD question generation scored as the published numbers are: one prediction per distinct
(sentence, answer), against every question asked of that pair.

    python experiments/squad_qg_answer.py group DATA/squad_qg_du_answer/dev.jsonl WORK/dev.grouped.jsonl \
        [--every 20 --sample WORK/dev.sample.jsonl] [--paragraphs DATA/squad_qg_du_answer/dev.paragraphs.jsonl]
    python experiments/squad_qg_answer.py score WORK/dev.grouped.jsonl WORK/dev.pred.txt --json WORK/scores.json \
        [--train_log WORK/model/train_log.jsonl] [--agnostic GROUPED_BY_SENTENCE PREDICTIONS]
    python experiments/squad_qg_answer.py examples WORK/test.grouped.jsonl WORK/test.pred.txt [--every 1000]
    python experiments/squad_qg_answer.py paragraphs DATA/.../train.jsonl DATA/.../train.paragraphs.jsonl OUT.jsonl

``group`` writes one ``{"src", "answer", "answer_start", "tgt", "refs"}`` line per distinct (src, answer) in order of
first appearance (``refs``: all questions of the pair, ``tgt`` the first): the file ``decode_seq2seq.py`` decodes and
``score`` scores. With ``--paragraphs`` the source is the sentence's whole paragraph (paragraph-level QG, the s2s-ft
setting), the answer pointed at inside it (``sentence`` keeps the sentence, which stays the grouping key).

``score`` reports BLEU-4 as QG papers compute it (nltk, lower-cased tokens), METEOR and ROUGE-L (with ``--coco`` also
the coco-caption METEOR 1.5 and ROUGE-L the papers' tables hold; nltk's METEOR is not theirs), on the same references
with the same scorer as three trivial baselines (copy the sentence; the sentence with its answer replaced by "what",
ending in "?"; and with ``--agnostic`` an answer-agnostic model's question for the sentence, given to every answer
of it), and how the answer is used: of the sentences asked about two or more different answers, the share given two
or more different questions; the share of questions that contain their own answer; the share with a number or with
a content word absent from the source (the references' own rates beside them).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for s2s_ft

from output_diagnostics import FUNCTION_WORDS  # noqa: E402  (this folder is on sys.path when run as a script)
from squad_qg import group_and_score_commands, scores_of, write_report  # noqa: E402

from s2s_ft.data.reading import DataError, iter_jsonl  # noqa: E402
from s2s_ft.evaluation.metrics import read_hypotheses  # noqa: E402
from s2s_ft.fileio import write_atomic  # noqa: E402

REPORTED = ("bleu4_tok", "meteor", "rougeL")


def _rows(path: str):
    for number, record in iter_jsonl(path, expected='"src", "answer", "answer_start" and "tgt"'):
        try:
            src, answer, start, tgt = record["src"], record["answer"], int(record["answer_start"]), record["tgt"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{number}: expected \"src\", \"answer\", \"answer_start\" and \"tgt\"") from None
        yield number, record, src, answer, start, tgt


def _letters(words: list) -> str:
    return "".join(c for word in words for c in word if c.isalnum())


def _paragraph_source(paragraph: str, sentence: str, answer: str, start: int, path: str,
                      number: int) -> tuple[str, int]:
    """(the answer as words of the paragraph, the index of its first word there; -1 with the answer unchanged when
    it is not inside). The paragraph's tokenisation and quotes can differ from the sentence's ("christ ." /
    "christ.", "` stalin note '" / "'stalin note '"), so both are matched on their letters and digits alone."""
    words = paragraph.split()
    owner = [index for index, word in enumerate(words) for c in word if c.isalnum()]  # the word of each letter
    at = _letters(words).find(_letters(sentence.split()))
    if at < 0:
        raise DataError(f"{path}:{number}: the sentence is not inside its paragraph (even by its letters and digits)")
    length = len(_letters(answer.split()))
    if start < 0 or not length:
        return answer, -1
    first = at + len(_letters(sentence.split()[:start]))
    return " ".join(words[owner[first]:owner[first + length - 1] + 1]), owner[first]


def _paragraph_texts(paragraphs: Optional[str]) -> dict:
    if not paragraphs:
        return {}
    return {record["id"]: record["text"] for _, record in iter_jsonl(paragraphs, expected='"id" and "text"')}


def _at_paragraph(row: dict, record: dict, texts: dict, path: str, number: int) -> dict:
    """``row`` with its paragraph as ``src`` (the sentence kept as ``sentence``, ``answer_start`` moved)."""
    if record.get("paragraph_id") not in texts:
        raise DataError(f"{path}:{number}: paragraph_id {record.get('paragraph_id')!r} not in the paragraphs file")
    paragraph = texts[record["paragraph_id"]]
    try:
        answer, at = _paragraph_source(paragraph, row["src"], row["answer"], row["answer_start"], path, number)
    except DataError:
        # Du's dev / test sentences were tokenised apart from SQuAD's paragraphs: 24 of 10,570 dev rows and 3 of
        # 11,877 test rows differ in more than spaces and quotes ("2 1/2" / "2½"); those keep their sentence alone
        answer, at, paragraph = row["answer"], row["answer_start"], row["src"]
    return {**row, "src": paragraph, "answer": answer, "answer_start": at, "sentence": row["src"],
            "sentence_answer": row["answer"]}


def group_by_pair(path: str, paragraphs: Optional[str] = None) -> list[dict]:
    """One record per distinct (src, answer), first-appearance order, all its questions as ``refs``; with
    ``paragraphs`` the source is the sentence's paragraph."""
    texts = _paragraph_texts(paragraphs)
    grouped: dict[tuple, dict] = {}
    for number, record, src, answer, start, tgt in _rows(path):
        key = (src, answer)
        if key not in grouped:
            grouped[key] = {"src": src, "answer": answer, "answer_start": start, "tgt": tgt, "refs": []}
            if paragraphs:
                grouped[key] = _at_paragraph(grouped[key], record, texts, path, number)
        grouped[key]["refs"].append(tgt)
    return list(grouped.values())


def paragraph_rows(path: str, paragraphs: str) -> list[dict]:
    """Every row of ``path`` (a training file) with its paragraph as the source."""
    texts = _paragraph_texts(paragraphs)
    return [_at_paragraph({"src": src, "answer": answer, "answer_start": start, "tgt": tgt}, record, texts, path,
                          number) for number, record, src, answer, start, tgt in _rows(path)]


def sentence_of(record: dict) -> str:
    return record.get("sentence", record["src"])


def answer_of(record: dict) -> str:
    """The answer as words of the sentence (a paragraph-level record's own ``answer`` is in the paragraph's words)."""
    return record.get("sentence_answer", record["answer"])


def what_baseline(record: dict) -> str:
    """The sentence with its answer replaced by "what", ending in "?" (the answer appended when not inside)."""
    words, answer = sentence_of(record).split(), answer_of(record).split()
    start = next((i for i in range(len(words) - len(answer) + 1) if words[i:i + len(answer)] == answer), None)
    if start is None:
        return " ".join(words + ["what", "?"])
    body = words[:start] + ["what"] + words[start + len(answer):]
    return " ".join((body[:-1] if body and body[-1] in (".", "!", "?") else body) + ["?"])


def contains_answer(question: str, answer: str) -> bool:
    q, a = question.lower().split(), answer.lower().split()
    return bool(a) and any(q[i:i + len(a)] == a for i in range(len(q) - len(a) + 1))


def unsupported(question: str, source: str) -> tuple[bool, bool]:
    """(a content word absent from the source, a word holding a digit absent from the source)."""
    source_words = set(source.lower().split())
    missing = [w for w in question.lower().split() if w not in FUNCTION_WORDS and w not in source_words]
    return bool(missing), any(any(c.isdigit() for c in w) for w in missing)


def answer_use(records: list[dict], outputs: list[str]) -> dict:
    """How the answer is used (fractions): see the module docstring."""
    by_sentence: dict[str, set] = {}
    questions: dict[str, set] = {}
    for record, output in zip(records, outputs):
        by_sentence.setdefault(sentence_of(record), set()).add(answer_of(record))
        questions.setdefault(sentence_of(record), set()).add(output)
    several = [s for s, answers in by_sentence.items() if len(answers) >= 2]
    n = len(outputs)
    flags = [unsupported(o, sentence_of(r)) for r, o in zip(records, outputs)]
    refs = [(ref, r) for r in records for ref in r["refs"]]
    ref_flags = [unsupported(ref, sentence_of(r)) for ref, r in refs]
    return {"sentences_with_several_answers": len(several),
            "several_answers_several_questions": sum(len(questions[s]) >= 2 for s in several) / max(1, len(several)),
            "contains_answer": sum(contains_answer(o, answer_of(r)) for r, o in zip(records, outputs)) / n,
            "refs_contain_answer": sum(contains_answer(ref, answer_of(r)) for ref, r in refs) / len(refs),
            "unsupported_word": sum(f[0] for f in flags) / n, "unsupported_number": sum(f[1] for f in flags) / n,
            "refs_unsupported_word": sum(f[0] for f in ref_flags) / len(refs),
            "refs_unsupported_number": sum(f[1] for f in ref_flags) / len(refs)}


def agnostic_outputs(records: list[dict], grouped_file: str, predictions: str) -> list[str]:
    """An answer-agnostic model's question for each record's sentence (its grouped-by-sentence file and outputs)."""
    sources = [record["src"] for _, record in iter_jsonl(grouped_file, expected='"src"')]
    outputs = read_hypotheses(predictions)
    if len(sources) != len(outputs):
        raise DataError(f"{predictions}: {len(outputs)} lines, but {grouped_file} has {len(sources)} sources")
    by_sentence = dict(zip(sources, outputs))
    missing = [sentence_of(r) for r in records if sentence_of(r) not in by_sentence]
    if missing:
        raise DataError(f"{grouped_file}: no prediction for the sentence \"{missing[0][:60]}\"")
    return [by_sentence[sentence_of(r)] for r in records]


def report(records: list[dict], outputs: list[str], agnostic: Optional[list[str]] = None, coco: bool = False) -> dict:
    sentences, refs = [sentence_of(r) for r in records], [r["refs"] for r in records]
    baselines = {"copy the sentence": sentences, "the sentence, answer -> \"what\", \"?\"": [what_baseline(r)
                                                                                           for r in records]}
    if agnostic is not None:
        baselines["answer-agnostic model, same question for every answer"] = agnostic
    return {"n": len(records), **scores_of(outputs, sentences, refs, coco), **answer_use(records, outputs),
            "baselines": {name: {**scores_of(lines, sentences, refs, coco), **answer_use(records, lines)}
                          for name, lines in baselines.items()}}


def format_table(result: dict, grouped_file: str) -> str:
    lines = [f"{grouped_file}: {result['n']} distinct (sentence, answer) pairs, all their questions as references",
             f"{'':56s} {'BLEU-4':>7s} {'METEOR':>7s} {'ROUGE-L':>8s} {'2+ q.':>7s} {'has ans':>8s} {'unsupp.':>8s}"
             f" {'number':>7s}"]
    coco = "meteor_coco" in result
    if coco:
        lines[1] += f" {'METEOR 1.5':>10s} {'ROUGE-L 1.2':>11s}"
    for name, row in [("model", result)] + list(result["baselines"].items()):
        lines.append(f"{name:56s} {row['bleu4_tok']:7.2f} {row['meteor']:7.2f} {row['rougeL']:8.2f} "
                     f"{100 * row['several_answers_several_questions']:6.1f}% {100 * row['contains_answer']:7.1f}% "
                     f"{100 * row['unsupported_word']:7.1f}% {100 * row['unsupported_number']:6.1f}%"
                     + (f" {row['meteor_coco']:10.2f} {row['rougeL_coco']:11.2f}" if coco else ""))
    lines.append(f"{'references':56s} {'':7s} {'':7s} {'':8s} {'':7s} {100 * result['refs_contain_answer']:7.1f}% "
                 f"{100 * result['refs_unsupported_word']:7.1f}% {100 * result['refs_unsupported_number']:6.1f}%")
    return "\n".join(lines)


def examples_table(records: list[dict], outputs: list[str], every: int) -> str:
    rows = ["| # | sentence | answer | reference | ours |", "|---:|---|---|---|---|"]
    for index in range(0, len(records), every):
        r = records[index]
        cells = [sentence_of(r), answer_of(r), r["refs"][0], outputs[index]]
        rows.append(f"| {index + 1} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def read_grouped(path: str) -> list[dict]:
    return [record for _, record in iter_jsonl(path, expected='"src", "answer" and "refs"')]


def main(argv=None) -> None:
    parser, commands, group, scorer = group_and_score_commands(__doc__.split("\n")[0], "distinct (sentence, answer)")
    group.add_argument("--paragraphs", help="{split}.paragraphs.jsonl: the paragraph as the source")
    scorer.add_argument("--agnostic", nargs=2, metavar=("GROUPED_BY_SENTENCE", "PREDICTIONS"),
                        help="an answer-agnostic model's predictions, one per sentence, as a baseline")
    para = commands.add_parser("paragraphs", help="a training file with each sentence's paragraph as the source")
    para.add_argument("split_file")
    para.add_argument("paragraphs")
    para.add_argument("output")
    shown = commands.add_parser("examples", help="every N-th pair side by side, as a Markdown table")
    shown.add_argument("grouped_file")
    shown.add_argument("predictions")
    shown.add_argument("--every", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.command == "group":
            if bool(args.every) != bool(args.sample):
                parser.error("--every and --sample go together")
            records = group_by_pair(args.dev_file, args.paragraphs)
            write_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            if args.sample:
                write_atomic(args.sample, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                  for r in records[::args.every]))
            print(f"{args.output}: {len(records)} distinct (sentence, answer) pairs")
            return
        if args.command == "paragraphs":
            rows = paragraph_rows(args.split_file, args.paragraphs)
            write_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            print(f"{args.output}: {len(rows)} rows, paragraph-level")
            return
        records, outputs = read_grouped(args.grouped_file), read_hypotheses(args.predictions)
        if len(outputs) != len(records):
            raise DataError(f"{args.predictions}: {len(outputs)} lines, but {args.grouped_file} has {len(records)}")
        if args.command == "examples":
            print(examples_table(records, outputs, args.every))
            return
        agnostic = agnostic_outputs(records, *args.agnostic) if args.agnostic else None
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    write_report(report(records, outputs, agnostic, args.coco), args, format_table)


if __name__ == "__main__":
    main()
