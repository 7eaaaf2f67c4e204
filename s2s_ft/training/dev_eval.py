"""Evaluation during training (``--eval_file``): the live model decodes a fixed dev sample, the scores go to
eval_log.jsonl, and the best-scoring model so far is kept in ``output_dir/best/``."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Optional

from s2s_ft.data.reading import DataError
from s2s_ft.decoding.inference import LoadedDecoder
from s2s_ft.decoding.search import Seq2SeqDecoder
from s2s_ft.errors import UsageError
from s2s_ft.evaluation import metrics
from s2s_ft.model.precision import AUTOCAST_DTYPES
from s2s_ft.training.config import TrainingConfig
from s2s_ft.training.rng import restore_rng, rng_state
from s2s_ft.training.rundir import BEST_DIR, BEST_JSON, EVAL_LOG, append_record

log = logging.getLogger("s2s_ft")


class DevEvaluator:
    """Decodes the first ``--eval_max_examples`` records of ``--eval_file`` with the model being trained (no copy,
    no reload from disk), scores them with s2s_ft.evaluation.metrics, appends a record to eval_log.jsonl, and saves the model
    to ``output_dir/best/`` (with best.json: step, metric, score) whenever ``--eval_metric`` beats the best so far.

    Evaluating leaves the training trajectory alone: decoding runs in eval mode (no dropout) under inference_mode
    (no gradients, no autograd state) and every RNG state is put back afterwards, so a run with evaluation trains
    the same weights, bit for bit, as one without."""

    def __init__(self, config: TrainingConfig, model, tokenizer, special, settings, save_best: Callable[[str, dict], None]):
        # read and check the dev sample now: a bad line should stop the run at start-up, not after hours
        self.sources, self.refs, numbers = metrics.read_dev_examples(config.eval_file, config.eval_max_examples or None)
        decoder = Seq2SeqDecoder(model, special, config.fine_tune, config.device, AUTOCAST_DTYPES[config.precision])
        self.decoder = LoadedDecoder(decoder, tokenizer, settings, config.detokenize)
        ids, truncated = self.decoder.source_ids(self.sources)
        for source_ids, number in zip(ids, numbers):
            if not source_ids:
                raise DataError(f"{config.eval_file}:{number}: \"src\" tokenises to nothing")
        if truncated:
            log.warning("%d of %d dev sources truncated to %d tokens", truncated, len(ids), config.max_source_seq_length)
        # at start-up, not at the first evaluation
        self.decoder.check_position_budget(ids, config.eval_max_tgt_length, "lower --eval_max_tgt_length")
        self.metrics, self.metric = config.eval_metrics.split(","), config.eval_metric
        try:  # a missing scorer package (or WordNet for METEOR) also shows up now, not at the first evaluation
            metrics.score(["a"], [["a"]], self.metrics)
        except ImportError as error:
            raise UsageError(f"--eval_file: scoring needs the Python package {error.name} (pip install -e "
                             f"'.[eval]')") from None
        self.search = {"beam_size": config.eval_beam_size, "max_tgt_length": config.eval_max_tgt_length}
        self.batch_size, self.output_dir, self.save_best = config.eval_batch_size, config.output_dir, save_best
        # best.json records these; a best found under other settings has a score that cannot be compared
        self.settings = {"eval_file": os.path.abspath(config.eval_file), "eval_max_examples": len(self.sources),
                         "detokenize": config.detokenize,
                         "eval_metric": self.metric, **{f"eval_{k}": v for k, v in self.search.items()}}
        self.best: Optional[dict] = None
        log.info("evaluating on %d examples of %s every %d steps (%s, beam %d); best model by %s in %s",
                 len(self.sources), config.eval_file, config.eval_steps, config.eval_metrics, config.eval_beam_size,
                 self.metric, os.path.join(config.output_dir, BEST_DIR))

    def resume(self) -> None:
        """Know the best score so far (from best/best.json), so that a worse later score does not replace it. A
        best found after the checkpoint resumed from stays: the resumed run retraces the same weights."""
        path = os.path.join(self.output_dir, BEST_DIR, BEST_JSON)
        if not os.path.isfile(path):
            return
        try:
            with open(path, encoding="utf-8") as handle:
                best = json.load(handle)
            float(best["score"]), int(best["step"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; the next evaluation replaces best/", path)
            return
        if best.get("eval") != self.settings:
            log.warning("%s was chosen with other evaluation settings (%s); the next evaluation replaces it", path,
                        best.get("eval"))
            return
        self.best = best
        log.info("best so far: %s %.4f at step %d", best["metric"], best["score"], best["step"])

    def scores(self, after_batch: Optional[Callable[[], object]] = None) -> dict:
        model = self.decoder.decoder.model
        rng = rng_state()
        model.eval()
        try:
            hyps = self.decoder.decode_texts(self.sources, self.batch_size, after_batch=after_batch, **self.search)
        finally:
            model.train()
            restore_rng(rng)
        return metrics.score(hyps, self.refs, self.metrics)

    def __call__(self, step: int, after_batch: Optional[Callable[[], object]] = None) -> dict:
        """Evaluate the model as it is at ``step``; ``after_batch`` is called after each decoding batch (the
        training loop trims the heap there)."""
        start = time.perf_counter()
        scores = {name: value if name == "n" else round(value, 4)
                  for name, value in self.scores(after_batch).items()}
        value = scores[self.metric]
        if self.best is None or value > self.best["score"]:
            self.best = {"step": step, "metric": self.metric, "score": value, "scores": scores,
                         "eval": self.settings}
            self.save_best(os.path.join(self.output_dir, BEST_DIR), {BEST_JSON: json.dumps(self.best, indent=2)})
        # a resumed run re-evaluates the best step itself (same weights, same score): still the best
        record = {"step": step, **scores, "metric": self.metric, "best": step == self.best["step"],
                  "seconds": round(time.perf_counter() - start, 2)}
        append_record(os.path.join(self.output_dir, EVAL_LOG), record)
        log.info("step %d: eval %s %.2f (best %.2f at step %d); %s", step, self.metric, value, self.best["score"],
                 self.best["step"], ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "n"))
        return record
