"""Learning-curve figures: train/dev loss and dev UA per epoch, the selected epoch marked.

Drawn on a ``matplotlib.figure.Figure`` with its own Agg canvas, never through pyplot: pyplot
keeps a process-wide backend and figure registry, and library code must not change the
caller's matplotlib state (a notebook user keeps their inline backend). PNG bytes are returned
so the HTML report can embed them without touching the disk.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

CURVES_FILE = "learning_curves.png"


def _values(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the rows where ``key`` holds a finite number (CSV cells are strings)."""
    xs, ys = [], []
    for row in history:
        try:
            value = float(row.get(key, ""))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            xs.append(int(float(row["epoch"])))
            ys.append(value)
    return xs, ys


def _two_panels():
    """A Figure on its own Agg canvas (never pyplot) with the loss and UA axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.6))
    FigureCanvasAgg(fig)
    loss_ax, ua_ax = fig.subplots(1, 2)
    return fig, loss_ax, ua_ax


def _epoch_axis(ax, ylabel: str) -> None:
    """Integer epochs on x, a light grid, the y label."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig, title: str, dpi: int) -> bytes:
    """The figure as PNG bytes, titled when a title is given."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _train_loss_key(histories: list[list[dict]]) -> str:
    """train_ce where logged, else train_loss: dev loss is cross-entropy only, so train CE is drawn
    beside it (like with like); the total training loss (CE + AVEL + 0.1 MEM) would set the axis
    and flatten both (AVEL ~ 11 here)."""
    return "train_ce" if any(_values(h, "train_ce")[0] for h in histories) else "train_loss"


def learning_curves_png(history: list[dict], selected_epoch: int | None, select_name: str = "dev",
                        title: str = "", dpi: int = 90, select_metric: str = "ua") -> bytes:
    """PNG of two panels: train and ``select_name`` loss, ``select_name`` UA, per epoch.

    ``history``: the rows of metrics.csv (``epoch``, ``train_loss``, ``dev_loss``, ``dev_ua``;
    ``test_*`` under the paper's select-on-test protocol). A dashed line marks the epoch whose
    weights were kept, so a reader sees how far selection is from the last epoch; the score
    selection maximised (``select_score``, a trailing mean over epochs) is drawn dashed beside
    the metric it smooths: UA panel for ``select_metric`` ua/wa/macro_f1, loss panel for loss."""
    fig, loss_ax, ua_ax = _two_panels()
    marker = "." if len(history) < 40 else None
    train_key = _train_loss_key([history])
    for key, label, colour in ((train_key, "train CE", "tab:blue"),
                               (f"{select_name}_loss", f"{select_name} CE", "tab:orange")):
        xs, ys = _values(history, key)
        if xs:
            loss_ax.plot(xs, ys, color=colour, marker=marker, label=label)
    xs, ys = _values(history, f"{select_name}_ua")
    if xs:
        ua_ax.plot(xs, [100 * y for y in ys], marker=marker,
                   color="tab:green", label=f"{select_name} UA %")
    xs, ys = _values(history, "select_score")
    if xs and select_metric == "loss":
        loss_ax.plot(xs, [-y for y in ys], "--", color="tab:purple", label="selection score")
    elif xs:
        ua_ax.plot(xs, [100 * y for y in ys], "--", color="tab:purple",
                   label=f"selection score ({select_metric})")
    for ax, name in ((loss_ax, "loss"), (ua_ax, f"{select_name} UA %")):
        _epoch_axis(ax, name)
        if selected_epoch is not None:
            ax.axvline(selected_epoch, color="tab:red", linestyle="--", linewidth=1,
                       label=f"selected (epoch {selected_epoch})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig, title, dpi)


def ensemble_curves_png(histories: list[list[dict]], selected_epochs: list[int | None],
                        select_name: str = "dev", title: str = "", dpi: int = 90) -> bytes:
    """PNG of an ensemble fold: every member's ``select_name`` loss and UA per epoch, one line per
    member, a dot at the epoch each member kept -- so a reader sees how far the members' own
    selections spread (the spread the averaged probabilities smooth out)."""
    fig, loss_ax, ua_ax = _two_panels()
    colours = [f"C{k % 10}" for k in range(len(histories))]
    # no dev split (data.dev_speakers 0): no member has dev curves, so the loss panel shows train CE
    loss_key = f"{select_name}_loss"
    if not any(_values(h, loss_key)[0] for h in histories):
        loss_key = _train_loss_key(histories)
    for k, (history, selected, colour) in enumerate(zip(histories, selected_epochs, colours), start=1):
        for ax, key, scale in ((loss_ax, loss_key, 1.0), (ua_ax, f"{select_name}_ua", 100.0)):
            xs, ys = _values(history, key)
            if not xs:
                continue
            ax.plot(xs, [scale * y for y in ys], color=colour, linewidth=1,
                    label=f"member {k}" if ax is ua_ax else None)
            if selected in xs:
                ax.plot([selected], [scale * ys[xs.index(selected)]], "o", color=colour, markersize=4)
    loss_name = f"{select_name} CE" if loss_key == f"{select_name}_loss" else loss_key.replace("_", " ")
    _epoch_axis(loss_ax, loss_name)
    _epoch_axis(ua_ax, f"{select_name} UA %")
    if ua_ax.get_legend_handles_labels()[0]:
        ua_ax.legend(fontsize=6, title="dot: kept epoch", title_fontsize=6)
    return _png(fig, title, dpi)


def read_history(run_dir: str | Path) -> list[dict]:
    """metrics.csv rows of a run (empty when the run wrote none)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_learning_curves(run_dir: str | Path, history: list[dict], selected_epoch: int | None,
                          select_name: str = "dev", title: str = "",
                          select_metric: str = "ua") -> Path:
    """``RUN_DIR/learning_curves.png`` (atomic: a reader never sees half a PNG)."""
    return write_png(Path(run_dir) / CURVES_FILE,
                     learning_curves_png(history, selected_epoch, select_name, title, select_metric=select_metric))


def write_png(path: Path, data: bytes) -> Path:
    """Write PNG bytes atomically: a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
