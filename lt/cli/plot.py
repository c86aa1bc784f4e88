"""``lt plot --run DIR``: a run's curves (loss, held-out loss, learning rate, tokens/s) as a PNG.

Drawn with matplotlib (the ``examples`` extra) on its Agg canvas through a bare
``Figure``: no pyplot, no window, no change to matplotlib's global backend. The series
come from :func:`lt.cli.runlog.curves`, so what is drawn is exactly what the log holds.
"""

from __future__ import annotations

import io
import pathlib

from .. import runs
from ..files import atomic_write
from .common import UsageError
from .runlog import Curves, curves, read_log

__all__ = ["draw_curves", "plot_run", "cmd_plot", "PLOT_NAME"]

PLOT_NAME = "curves.png"


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


def plot_run(root, out=None) -> pathlib.Path:
    """Write the curves of the run in ``root`` to ``out`` (default ``root/curves.png``), atomically;
    returns the path. ImportError naming the ``examples`` extra when matplotlib is missing."""
    files = runs.RunFiles(root)
    runs.load_settings(files)  # "not a run directory" before anything else
    _figure_class()
    records = read_log(files.log)
    if not records:
        raise ValueError(f"{files.log} holds no records yet: nothing to plot")
    fig = draw_curves(curves(records), title=str(files.root))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    out = pathlib.Path(out) if out is not None else files.root / PLOT_NAME
    atomic_write(out, [buffer.getvalue()])
    return out


def cmd_plot(args) -> int:
    try:
        out = plot_run(args.run, args.out)
    except ImportError as e:
        raise UsageError(str(e)) from None
    print(out)
    return 0
