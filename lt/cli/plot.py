"""``lt plot --run DIR``: a run's curves (loss, held-out loss, learning rate, tokens/s) as a PNG;
``lt plot --run A --run B --out FILE`` overlays several runs (Muon against AdamW, say).

Drawn with matplotlib (the ``examples`` extra) on its Agg canvas through a bare
``Figure``: no pyplot, no window, no change to matplotlib's global backend. The series
come from :func:`lt.cli.runlog.curves`, so what is drawn is exactly what the log holds.

The PNG carries the text chunk ``Software: lt plot``: that is how ``lt plot --out FILE``
knows a file there is its own to replace (:func:`written_by_lt_plot`); anything else there
is replaced only with ``--force``, and a run's own files never.
"""

from __future__ import annotations

import io
import pathlib
import struct

from .. import runs
from ..files import atomic_write, check_overwrite
from .common import UsageError, refuse_run_file
from .runlog import Curves, curves, read_log

__all__ = ["draw_curves", "draw_overlay", "plot_run", "plot_runs", "cmd_plot", "written_by_lt_plot", "PLOT_NAME"]

PLOT_NAME = "curves.png"
_MARK = b"lt plot"  # the PNG's tEXt "Software" value starts with it
_PNG = b"\x89PNG\r\n\x1a\n"


def written_by_lt_plot(path) -> bool:
    """Whether ``path`` is a PNG that ``lt plot`` wrote: a ``Software`` text chunk starting
    ``lt plot`` before its image data. Reads the chunk headers only (at most 64 chunks)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG:
                return False
            for _ in range(64):
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return False
                if kind == b"tEXt" and length <= 1024:
                    key, _, value = f.read(length).partition(b"\0")
                    if key == b"Software" and value.startswith(_MARK):
                        return True
                    length = 0
                f.seek(length + 4, 1)  # the data, then the CRC
    except OSError:
        return False
    return False


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            'lt plot draws with matplotlib, which is not installed: pip install "lt[examples]" '
            "(or pip install matplotlib)"
        ) from None
    return Figure


def draw_curves(c: Curves, title: str = ""):
    """A matplotlib ``Figure`` of three panels against the step: training and held-out loss,
    learning rate, tokens/s (a panel with no data says so)."""
    fig = _figure_class()(figsize=(7, 8), layout="constrained")
    loss_ax, lr_ax, rate_ax = fig.subplots(3, 1, sharex=True)
    loss_ax.plot(*c.train_loss, label="training loss (mean of each log period)", color="tab:blue")
    if len(c.eval_loss[0]):
        loss_ax.plot(*c.eval_loss, "o-", label="validation loss", color="tab:orange")
    loss_ax.set_ylabel("loss (nats/token)")
    loss_ax.legend()
    lr_ax.plot(*c.lr, color="tab:green")
    lr_ax.set_ylabel("learning rate")
    rate_ax.plot(*c.tokens_per_s, color="tab:purple")
    rate_ax.set_ylabel("tokens/s")
    rate_ax.set_xlabel("step")
    for ax, series in ((lr_ax, c.lr), (rate_ax, c.tokens_per_s)):
        if not len(series[0]):
            ax.text(0.5, 0.5, "not in the log", ha="center", va="center", transform=ax.transAxes)
    for ax in (loss_ax, lr_ax, rate_ax):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def draw_overlay(named: list[tuple[str, Curves]], title: str = ""):
    """A ``Figure`` of the same three panels with one colour per run: its training loss as a line,
    its validation loss as dots on a dashed line; ``named`` holds ``(label, curves)`` pairs."""
    fig = _figure_class()(figsize=(7, 8), layout="constrained")
    loss_ax, lr_ax, rate_ax = fig.subplots(3, 1, sharex=True)
    for i, (label, c) in enumerate(named):
        colour = f"C{i % 10}"
        loss_ax.plot(*c.train_loss, color=colour, label=f"{label}: training loss")
        if len(c.eval_loss[0]):
            loss_ax.plot(*c.eval_loss, "o--", color=colour, label=f"{label}: validation loss")
        lr_ax.plot(*c.lr, color=colour, label=label)
        rate_ax.plot(*c.tokens_per_s, color=colour, label=label)
    loss_ax.set_ylabel("loss (nats/token)")
    lr_ax.set_ylabel("learning rate")
    rate_ax.set_ylabel("tokens/s")
    rate_ax.set_xlabel("step")
    for ax in (loss_ax, lr_ax, rate_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _records(files: runs.RunFiles) -> list:
    records = read_log(files.log)
    if not records:
        raise ValueError(f"{files.log} holds no records yet: nothing to plot")
    return records


def _write_png(fig, target: pathlib.Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": f"{_MARK.decode()} (matplotlib)"})
    atomic_write(target, [buffer.getvalue()])


def plot_runs(roots, out, force: bool = False) -> pathlib.Path:
    """Overlay the curves of the runs in ``roots`` (two or more) in one PNG at ``out``, labelled by
    their folders' names; ``out`` as in :func:`plot_run` (never one of the runs' own files)."""
    all_files = [runs.RunFiles(root) for root in roots]
    for files in all_files:
        runs.load_settings(files)  # "not a run directory" before anything else
        refuse_run_file(files, out)
    target = pathlib.Path(out)
    check_overwrite(target, written_by_lt_plot, force=force, ours="a plot lt wrote (a PNG marked 'lt plot')")
    _figure_class()
    named = [(files.root.name or str(files.root), curves(_records(files))) for files in all_files]
    _write_png(draw_overlay(named, title=" vs ".join(name for name, _ in named)), target)
    return target


def plot_run(root, out=None, force: bool = False) -> pathlib.Path:
    """Write the curves of the run in ``root`` to ``out`` (default ``root/curves.png``), atomically;
    returns the path. An ``out`` that exists is replaced only when ``lt plot`` wrote it, or with
    ``force``; the default path is lt's and always replaced; a run's own files never are.
    ImportError naming the ``examples`` extra when matplotlib is missing."""
    files = runs.RunFiles(root)
    runs.load_settings(files)  # "not a run directory" before anything else
    target = pathlib.Path(out) if out is not None else files.root / PLOT_NAME
    if out is not None:
        refuse_run_file(files, out)
    check_overwrite(
        target, written_by_lt_plot, force=force or out is None, ours="a plot lt wrote (a PNG marked 'lt plot')"
    )
    _figure_class()
    _write_png(draw_curves(curves(_records(files)), title=str(files.root)), target)
    return target


def cmd_plot(args) -> int:
    force = getattr(args, "force", False)
    run_dirs = args.run if isinstance(args.run, list) else [args.run]
    if len(run_dirs) > 1 and args.out is None:
        raise UsageError(f"--out FILE: where to write the overlay of the {len(run_dirs)} runs (none is its home)")
    try:
        out = (
            plot_run(run_dirs[0], args.out, force=force) if len(run_dirs) == 1 else plot_runs(run_dirs, args.out, force)
        )
    except ImportError as e:
        raise UsageError(str(e)) from None
    print(out)
    return 0
