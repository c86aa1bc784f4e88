"""The user's first hour with ``lt`` (issue 32): a command that explains itself.

``lt`` alone lists its commands and ``lt --version`` names the package's version; every
``lt generate`` flag gives its default, ``--init-hf`` says hub names work and ``--beams``
names the sampling flags it ignores; a closed pipe ends a command quietly; sizes read in
binary units that scale (one helper, :func:`lt.cli.common.format_bytes`); ``lt info --run``
lists the run's quantized checkpoints; the CLI reference page is generated from the parser,
so it says what ``--help`` says."""

import argparse
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lt
import lt.cli
from lt import checkpoint, quant, tree
from lt.cli.common import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer.\n" * 30


def lt_cmd(*args, stdout=subprocess.PIPE, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lt", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=300)


def subparsers(parser: argparse.ArgumentParser) -> dict:
    """The command name -> parser of ``lt``'s subcommands."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    """The help text ``--help`` shows for ``flag``, its ``%(default)s`` expanded."""
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return argparse.HelpFormatter(parser.prog)._expand_help(action) if action.help else ""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny run on a char tokenizer (a checkpoint at step 2); tests use copies."""
    base = tmp_path_factory.mktemp("first-hour")
    (base / "text.txt").write_text(TEXT)
    assert lt.cli.main(["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(base / "text.txt"),
                        "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-every", "2",
                        "--checkpoint-every", "2", "--sample-tokens", "0", "--out", str(base / "run")]) == 0
    return base / "run"


@pytest.fixture
def run(trained, tmp_path, capsys):
    out = pathlib.Path(shutil.copytree(trained, tmp_path / "run"))
    capsys.readouterr()
    return out


# 1. `lt` alone and `lt --version`


def test_lt_alone_lists_every_command_with_one_line_each():
    alone, asked = lt_cmd(), lt_cmd("--help")
    assert alone.returncode == 0 and alone.stderr == "", alone.stderr
    assert alone.stdout == asked.stdout                       # the same text as `lt --help`
    for name, parser in subparsers(build_parser()).items():
        (line,) = [text for text in alone.stdout.splitlines() if re.match(rf"\s+{name}\s", text)]
        assert len(line.split()) > 3, line                    # the name, then what the command does
    assert set(subparsers(build_parser())) == set(lt.cli.COMMANDS)
    assert "lt COMMAND --help" in alone.stdout


def test_flags_without_a_command_name_every_command(capsys):
    assert lt.cli.main(["--nope"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"lt: error: give a command: {', '.join(subparsers(build_parser()))} (lt --help says what each does)"


def test_lt_version_is_the_packages():
    result = lt_cmd("--version")
    assert result.returncode == 0 and result.stdout == f"lt {lt.__version__}\n"
    assert lt.__version__ == importlib.metadata.version("lt") == "0.1.0"


# 2. What `--help` says


def test_generate_help_gives_the_defaults_the_command_uses():
    generate = subparsers(build_parser())["generate"]
    defaults = vars(generate.parse_args([]))
    assert (defaults["max_new_tokens"], defaults["temperature"], defaults["seed"]) == (300, 0.8, 0)
    for flag, shown in (("--max-new-tokens", "default 300"), ("--temperature", "default 0.8"),
                        ("--seed", "default 0")):
        assert shown in help_of(generate, flag), (flag, help_of(generate, flag))
    for action in generate._actions:                          # every flag says what it does
        assert action.help, action.option_strings
    shown = " ".join(generate.format_help().split())
    assert " ".join(help_of(generate, "--max-new-tokens").split()) in shown


def test_init_hf_help_says_hub_names_work():
    from lt.hf.hub import is_hub_name

    text = help_of(subparsers(build_parser())["train"], "--init-hf")
    assert "gpt2" in text and "org/name" in text and "Hugging Face cache" in text, text
    assert is_hub_name("gpt2") and is_hub_name("org/name")    # what resolve() fetches from the cache


def test_beams_help_names_the_sampling_flags_it_ignores(run):
    text = help_of(subparsers(build_parser())["generate"], "--beams")
    for flag in ("--temperature", "--top-k", "--top-p", "--seed"):
        assert flag in text, text
    plain = lt_cmd("generate", "--run", run, "--prompt", "To be", "--max-new-tokens", 6, "--beams", 2)
    other = lt_cmd("generate", "--run", run, "--prompt", "To be", "--max-new-tokens", 6, "--beams", 2,
                   "--temperature", 0.1, "--top-k", 2, "--top-p", 0.5, "--seed", 9)
    assert plain.returncode == other.returncode == 0, plain.stderr + other.stderr
    assert plain.stdout == other.stdout and plain.stdout.startswith("To be")


# 3. A closed pipe


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["info"], [], ["--help"]], ids=["info", "alone", "help"])
def test_a_closed_pipe_ends_the_command_quietly(args, unbuffered):
    read, write = os.pipe()
    os.close(read)                                            # no reader: every write fails with EPIPE
    try:
        result = lt_cmd(*args, stdout=write, env={"PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write)
    assert result.stderr == ""
    # 141 = 128 + SIGPIPE, as a shell reports a Unix tool the signal ended; argparse's --help
    # swallows the failed write itself when unbuffered, and exits 0
    assert result.returncode == (0 if args == ["--help"] and unbuffered else 141)


# 4. Sizes


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (1, "1 B"), (999, "999 B"), (1000, "0.977 KiB"), (1023, "0.999 KiB"), (1024, "1.00 KiB"),
    (1536, "1.50 KiB"), (10 * 1024 - 1, "10.0 KiB"), (123 * 1024, "123 KiB"), (2**20, "1.00 MiB"),
    (80_846_848, "77.1 MiB"), (3 * 2**30 // 2, "1.50 GiB"), (2**40, "1.00 TiB"),
])
def test_format_bytes_examples(n, text):
    from lt.cli.common import format_bytes

    assert format_bytes(n) == text
    assert format_bytes(n, sep="") == text.replace(" ", "")


@given(st.integers(0, 999 * 2**50))
def test_format_bytes_keeps_three_significant_digits(n):
    from lt.cli.common import format_bytes

    number, unit = format_bytes(n).split(" ")
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}[unit]
    if unit == "B":
        assert int(number) == n
        return
    digits = number.replace(".", "").lstrip("0")
    assert len(digits) == 3 and float(number) < 1000, number  # 0.977, 1.00, 12.3, 123
    assert float(number) * scale == pytest.approx(n, rel=5e-3)


def test_info_tables_use_binary_units(capsys):
    from lt.cli.common import format_bytes

    assert lt.cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\d(MB|KB|GB)\b", out), out
    rows = [line.split() for line in out.splitlines() if line.startswith("gpt2 ")]
    n, spec = lt.GPT.preset("gpt2").num_params(), lt.GPT.preset("gpt2").spec()
    assert rows[0][-3:-1] == [format_bytes(4 * n, sep=""), format_bytes(16 * n, sep="")] == ["475MiB", "1.85GiB"]
    assert rows[1][2::2] == [format_bytes(quant.planned_nbytes(spec, b), sep="") for b in (None, 8, 4)]
    assert rows[1][-1] == "77.1MiB"
    tiny = next(line for line in out.splitlines() if line.startswith("llama-tiny "))
    assert "0.0" not in tiny.split()[-1]                      # 20 KiB of int4 weights is not zero


def test_quantize_prints_sizes_that_scale(run, capsys):
    from lt.cli.common import format_bytes

    assert lt.cli.main(["quantize", "--run", str(run), "--bits", "4"]) == 0
    out = capsys.readouterr().out
    before = tree.nbytes(checkpoint.load_model(run / "checkpoint.safetensors")[1])
    after = tree.nbytes(checkpoint.load_model(run / "checkpoint-int4.safetensors")[1])
    assert after < before < 2**20                             # a small model: under a MiB either way
    assert f"int4, {format_bytes(after)} (" in out and f"from {format_bytes(before)} of float weights" in out
    assert "0.0 MiB" not in out and "KiB" in out


def info_lines(run, capsys) -> dict:
    assert lt.cli.main(["info", "--run", str(run)]) == 0
    return {line[:12].strip(): line[13:] for line in capsys.readouterr().out.splitlines()}


def test_info_run_lists_the_quantized_checkpoints_with_their_sizes(run, capsys):
    from lt.cli.common import format_bytes

    assert info_lines(run, capsys)["quantized"] == "none (lt quantize writes them)"
    for bits in (8, 4):
        assert lt.cli.main(["quantize", "--run", str(run), "--bits", str(bits)]) == 0
    (run / "notes.safetensors").write_bytes(b"not a checkpoint")  # not lt's: not listed
    shutil.copy(run / "checkpoint.safetensors", run / "copy.safetensors")  # a float checkpoint: not listed
    info = info_lines(run, capsys)
    listed = [f"{name} ({kind}, {format_bytes((run / name).stat().st_size)})"
              for name, kind in (("checkpoint-int4.safetensors", "int4"), ("checkpoint-int8.safetensors", "int8"))]
    assert info["quantized"] == ", ".join(listed)
    size = format_bytes((run / "checkpoint.safetensors").stat().st_size)
    assert info["checkpoint"] == f"{run / 'checkpoint.safetensors'} ({size}, with optimizer state)"


# 5. The CLI reference page


def test_the_reference_shows_every_commands_help_as_help_prints_it(monkeypatch, capsys):
    from lt.cli.reference import WIDTH, reference

    text = reference()
    monkeypatch.setenv("COLUMNS", str(WIDTH + 2))             # argparse wraps at the terminal's width - 2
    monkeypatch.setenv("PYTHON_COLORS", "0")
    for argv in ([], *([name] for name in subparsers(build_parser()))):
        with pytest.raises(SystemExit) as done:
            lt.cli.main([*argv, "--help"])
        assert done.value.code == 0
        shown = capsys.readouterr().out
        assert f"## `{' '.join(['lt', *argv])}`\n\n```text\n{shown.rstrip()}\n```\n" in text


def test_the_reference_names_every_flag_of_every_command():
    from lt.cli.reference import reference

    text, parser = reference(), build_parser()
    flags = [(name, flag) for name, sub in subparsers(parser).items() for a in sub._actions
             for flag in a.option_strings]
    assert ("train", "--init-hf") in flags and ("generate", "--beams") in flags and len(flags) > 40
    sections = {s.split("`")[0]: s for s in text.split("## `lt ")[1:]}
    for name, flag in flags:
        assert flag in sections[name], (name, flag)


def test_the_docs_page_is_the_reference_at_build_time():
    from lt.cli.reference import reference

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert page.count(hooks.CLI_REFERENCE) == 1
    built = hooks.on_page_markdown(page)
    assert reference() in built and hooks.CLI_REFERENCE not in built
    assert hooks.on_page_markdown("no marker here") == "no marker here"

