"""The run's loss curve, drawn once training ends: ``loss_curve.png`` when matplotlib is installed
(``pip install 'vlmplug[plots]'``), else ``loss_curve.txt``, a plain-text chart.

Pure functions over plain data (``metrics.jsonl`` train records and ``metrics.json``'s ``curve``
points); matplotlib is imported only inside :func:`write_curves`, and without pyplot (no global
figure state, no display backend).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["text_curve", "loss_points", "eval_series", "write_curves", "PNG", "TXT"]

PNG = "loss_curve.png"
TXT = "loss_curve.txt"


def _num(v: float) -> str:
    return f"{v:.4g}"


def _finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def text_curve(points: Sequence[tuple[float, float]], width: int = 60, height: int = 15) -> str:
    """A ``width`` x ``height`` character chart of ``(x, y)`` points, one ``*`` per point.

    The top row is the largest y and the bottom row the smallest (both labelled on the y axis);
    the first column is the smallest x and the last the largest (labelled under the x axis). A point
    goes to the nearest cell; non-finite points are left out.
    """
    if width < 1 or height < 1:
        raise ValueError("text_curve: width and height must be at least 1")
    pts = _finite(points)
    if not pts:
        return "(no points)"
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for x, y in pts:
        col = round((x - x0) / (x1 - x0) * (width - 1)) if x1 > x0 else 0
        row = round((y1 - y) / (y1 - y0) * (height - 1)) if y1 > y0 else (height - 1) // 2
        grid[row][col] = "*"
    top, bottom = _num(y1), _num(y0)
    pad = max(len(top), len(bottom))
    lines = []
    labels = {0: top, height - 1: bottom} if y1 > y0 else {(height - 1) // 2: top}
    for r, cells in enumerate(grid):
        label = labels.get(r, "")
        lines.append(f"{label:>{pad}} |{''.join(cells)}".rstrip())
    lines.append(" " * pad + " +" + "-" * width)
    left, right = _num(x0), _num(x1)
    gap = max(width - len(left) - len(right), 1)
    lines.append(" " * (pad + 2) + (left + " " * gap + right if x1 > x0 else left))
    return "\n".join(lines)


def loss_points(history: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """``(step, loss)`` of the records that carry both (train records of ``metrics.jsonl``, or a
    Trainer's ``log_history``), finite ones only, in step order."""
    out = [
        (float(h["step"]), float(h["loss"]))
        for h in history
        if isinstance(h.get("step"), (int, float)) and isinstance(h.get("loss"), (int, float))
    ]
    return sorted(_finite(out))


def eval_series(
    eval_points: Iterable[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """``{"evaluator/metric": [(step, value), ...]}`` from ``metrics.json``'s ``curve`` points
    (``{"step", "metrics": {evaluator: {metric: value}}}``): the ``keys`` given (e.g. each evaluator's
    primary metric), or else every top-level float metric of each evaluator (nested breakdowns are
    left out)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for point in eval_points:
        step = point.get("step")
        if not isinstance(step, (int, float)):
            continue
        for evaluator, values in (point.get("metrics") or {}).items():
            if not isinstance(values, Mapping):
                continue
            for name, value in values.items():
                key = f"{evaluator}/{name}"
                if keys is not None and key not in keys:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    series.setdefault(key, []).append((float(step), float(value)))
    return series


def write_curves(
    run_dir: str | Path,
    history: Iterable[Mapping[str, Any]],
    eval_points: Iterable[Mapping[str, Any]] = (),
    eval_keys: Sequence[str] | None = None,
) -> Path:
    """Draw the training loss by step (and the evaluation metrics ``eval_keys`` by step, when there
    are curve points; see :func:`eval_series`) into ``run_dir``: ``loss_curve.png`` with matplotlib,
    else ``loss_curve.txt``. Returns the file written."""
    run_dir = Path(run_dir)
    loss = loss_points(history)
    series = eval_series(eval_points, eval_keys)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return _write_text(run_dir / TXT, loss, series)
    rows = 2 if series else 1
    fig = Figure(figsize=(7, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    if loss:
        ax.plot([x for x, _ in loss], [y for _, y in loss], lw=1.2, color="tab:blue")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if series:
        for name, pts in series.items():
            axes[1].plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, lw=1.2, label=name)
        axes[1].set_ylabel("evaluation")
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize="small")
    axes[-1].set_xlabel("step")
    path = run_dir / PNG
    fig.savefig(path, dpi=110, format="png")
    return path


def _write_text(path: Path, loss: list[tuple[float, float]], series: dict[str, list[tuple[float, float]]]) -> Path:
    lines = ["training loss by step (install matplotlib, or vlmplug[plots], for loss_curve.png)", ""]
    if loss:
        low = min(loss, key=lambda p: p[1])
        high = max(loss, key=lambda p: p[1])
        lines.append(
            f"{len(loss)} logged steps; first {_num(loss[0][1])}, last {_num(loss[-1][1])}, "
            f"min {_num(low[1])} at step {low[0]:g}, max {_num(high[1])} at step {high[0]:g}"
        )
        lines.append("")
    lines.append(text_curve(loss))
    if series:
        lines += ["", "evaluation by step:"]
        steps = sorted({x for pts in series.values() for x, _ in pts})
        names = list(series)
        lines.append("  ".join(["step".rjust(8), *(n.rjust(max(len(n), 8)) for n in names)]))
        for step in steps:
            cells = [f"{step:>8g}"]
            for n in names:
                value = dict(series[n]).get(step)
                cells.append((_num(value) if value is not None else "-").rjust(max(len(n), 8)))
            lines.append("  ".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
