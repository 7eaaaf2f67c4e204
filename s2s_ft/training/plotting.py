"""Training curves from a run's JSON-lines logs: loss against step, and the dev scores against step when the run
evaluated (``--eval_file``). ``run_seq2seq.py`` writes ``OUTPUT_DIR/training_curves.png`` at the end of training;
this regenerates it (e.g. while a run is going)::

    python -m s2s_ft.cli.plot OUTPUT_DIR [--out FILE.png]

matplotlib (``pip install -e ".[eval]"``) is imported only when plotting, with the non-interactive Agg canvas, so
nothing here needs a display or touches pyplot's global state.
"""
from __future__ import annotations

import io
import json
import os
from typing import Optional

from s2s_ft.data.reading import DataError
from s2s_ft.evaluation.metrics import METRIC_KEYS
from s2s_ft.fileio import write_atomic

PLOT_NAME = "training_curves.png"
TRAIN_LOG, EVAL_LOG = "train_log.jsonl", "eval_log.jsonl"


def read_records(path: str) -> list[dict]:
    """The records of a JSON-lines log; a line cut short by a kill is skipped (resume rewrites the log anyway)."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def plot_run(output_dir: str, out: Optional[str] = None) -> str:
    """Write the curves of the run in ``output_dir`` to ``out`` (default ``output_dir/training_curves.png``) and
    return its path. Raises ImportError without matplotlib, DataError when there is nothing to plot."""
    import matplotlib  # noqa: F401  (first: a missing or blocked matplotlib fails here, as an ImportError)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in read_records(os.path.join(output_dir, TRAIN_LOG)) if r.get("loss") is not None]
    evals = read_records(os.path.join(output_dir, EVAL_LOG))
    if not train and not evals:
        raise DataError(f"{output_dir}: no {TRAIN_LOG} or {EVAL_LOG} records to plot")
    metrics = [name for name in METRIC_KEYS if any(name in r for r in evals)]
    figure = Figure(figsize=(8, 7 if metrics else 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 if metrics else 1, 1, sharex=True, squeeze=False)[:, 0]
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", linewidth=1)
    axes[0].set_ylabel("training loss")
    axes[0].set_title(os.path.basename(os.path.abspath(output_dir)))
    if metrics:
        for name in metrics:
            points = [(r["step"], r[name]) for r in evals if r.get(name) is not None]
            axes[1].plot(*zip(*points), marker="o", markersize=3, label=name)
        best = [r for r in evals if r.get("best") and r.get("metric") in r]  # the last one is best/
        if best:
            step, metric = best[-1]["step"], best[-1]["metric"]
            axes[1].plot([step], [best[-1][metric]], marker="*", markersize=14, color="gold",
                         markeredgecolor="black", linestyle="none",
                         label=f"best {metric} {best[-1][metric]:.2f} (step {step})")
        axes[1].set_ylabel("dev score (0-100)")
        axes[1].legend(fontsize="small")
    axes[-1].set_xlabel("optimizer step")
    for ax in axes:
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    out = out or os.path.join(output_dir, PLOT_NAME)
    write_atomic(out, buffer.getvalue())
    return out
