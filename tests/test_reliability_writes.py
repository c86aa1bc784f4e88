"""What ``lt quantize`` and ``lt plot`` may write over, and the errors a user reads (issue 31).

A run's own files are never written over; any other existing file only when lt wrote it
(a quantized checkpoint, a PNG marked by ``lt plot``) or ``--force`` asks; a directory is
named as one. Group sizes are bounded by the matrix, empty matrices and float ``bits``
get an answer, and a parser error reads ``lt: error:`` once. Everything runs in this
process through ``lt.cli.main`` on a tiny run."""

import os
import pathlib
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
import lt.cli
from lt import checkpoint, files, quant, tree
from lt.quant import dequantize_array, quantize_array

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer.\n" * 30
TINY = lt.GPT.preset("tiny")
P32 = TINY.init(lt.random.key(0))


def error_line(capsys) -> str:
    """The one line the command printed on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny run with a checkpoint (step 2) and optimizer state; tests use copies."""
    base = tmp_path_factory.mktemp("writes")
    data = base / "text.txt"
    data.write_text(TEXT)
    argv = [
        "train",
        "--recipe",
        "nanogpt",
        "--preset",
        "tiny",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--sample-tokens",
        "0",
        "--checkpoint-every",
        "2",
        "--eval-every",
        "2",
        "--data",
        str(data),
        "--steps",
        "2",
        "--out",
        str(base / "run"),
    ]
    assert lt.cli.main(argv) == 0
    return base / "run"


@pytest.fixture
def run(trained, tmp_path, capsys):
    out = pathlib.Path(shutil.copytree(trained, tmp_path / "run"))
    capsys.readouterr()
    return out


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(
    not has_matplotlib(), reason='drawing needs matplotlib: pip install "lt[examples]"'
)


# ----------------------------------------------------------------- 1. the run's own checkpoint

SPELLINGS = ["absolute", "relative", "dot", "dotdot", "linked folder", "link to the file"]


def spell(run: pathlib.Path, how: str, monkeypatch) -> str:
    """The run's checkpoint path, spelled ``how``."""
    monkeypatch.chdir(run.parent)
    if how == "linked folder":
        (run.parent / "alias").symlink_to(run, target_is_directory=True)
        return "alias/checkpoint.safetensors"
    if how == "link to the file":
        (run.parent / "ck.safetensors").symlink_to(run / "checkpoint.safetensors")
        return "ck.safetensors"
    return {
        "absolute": str(run / "checkpoint.safetensors"),
        "relative": "run/checkpoint.safetensors",
        "dot": "./run/checkpoint.safetensors",
        "dotdot": "run/../run/checkpoint.safetensors",
    }[how]


@pytest.mark.parametrize("force", [[], ["--force"]])
@pytest.mark.parametrize("how", SPELLINGS)
def test_quantize_never_writes_over_the_runs_training_checkpoint(run, how, force, monkeypatch, capsys):
    before = (run / "checkpoint.safetensors").read_bytes()
    out = spell(run, how, monkeypatch)
    assert lt.cli.main(["quantize", "--run", "run", "--out", out, *force]) == 2
    assert error_line(capsys) == (
        f"lt: error: --out {out} is the run's training checkpoint (its params and optimizer state): "
        "writing over it would leave the run unable to resume; choose another --out"
    )
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert checkpoint.read_metadata(run / "checkpoint.safetensors")["has_opt_state"] == "1"


@needs_matplotlib
def test_plot_never_writes_over_the_runs_files_even_when_forced(run, capsys):
    before = (run / "run.json").read_bytes()
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(run / "run.json"), "--force"]) == 2
    assert error_line(capsys) == (
        f"lt: error: --out {run / 'run.json'} is the run's settings (run.json): writing over it would leave "
        "the run unreadable; choose another --out"
    )
    assert (run / "run.json").read_bytes() == before


# ----------------------------------------------------------------- 2. files lt did not write


def test_quantize_refuses_a_file_it_did_not_write_unless_forced(run, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert lt.cli.main(["quantize", "--run", str(run), "--out", str(notes)]) == 2
    assert error_line(capsys) == (
        f"lt: error: {notes} already exists and is not a quantized checkpoint lt wrote; "
        "lt replaces only files it wrote: give --force to replace it"
    )
    assert notes.read_text() == "my notes\n"
    assert lt.cli.main(["quantize", "--run", str(run), "--out", str(notes), "--force"]) == 0
    assert quant.describe(checkpoint.load(notes).params) == "int8"
    assert not list(tmp_path.glob(".*.tmp"))


def test_quantize_refuses_another_runs_training_checkpoint_and_replaces_its_own_output(run, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    shutil.copyfile(run / "checkpoint.safetensors", other)  # params and optimizer state
    assert lt.cli.main(["quantize", "--run", str(run), "--out", str(other)]) == 2
    assert "is not a quantized checkpoint lt wrote" in error_line(capsys)
    assert checkpoint.read_metadata(other)["has_opt_state"] == "1"
    mine = tmp_path / "q.safetensors"
    assert lt.cli.main(["quantize", "--run", str(run), "--bits", "8", "--out", str(mine)]) == 0
    assert lt.cli.main(["quantize", "--run", str(run), "--bits", "4", "--out", str(mine)]) == 0  # its own: replaced
    assert quant.describe(checkpoint.load(mine).params) == "int4"


def test_quantize_refuses_a_symbolic_link_unless_forced(run, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep\n")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    assert lt.cli.main(["quantize", "--run", str(run), "--out", str(link)]) == 2
    assert error_line(capsys) == (
        f"lt: error: {link} already exists and is a symbolic link; lt replaces only files it wrote: "
        "give --force to replace it"
    )
    assert link.is_symlink() and target.read_text() == "keep\n"


def test_quantize_default_output_is_replaced_as_before(run, capsys):
    assert lt.cli.main(["quantize", "--run", str(run)]) == 0
    assert lt.cli.main(["quantize", "--run", str(run)]) == 0
    assert capsys.readouterr().out.count("checkpoint-int8.safetensors") == 2


@needs_matplotlib
def test_plot_refuses_a_file_it_did_not_write_and_replaces_its_own(run, tmp_path, capsys):
    report = tmp_path / "report.txt"
    report.write_text("quarterly report\n")
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(report)]) == 2
    assert error_line(capsys) == (
        f"lt: error: {report} already exists and is not a plot lt wrote (a PNG marked 'lt plot'); "
        "lt replaces only files it wrote: give --force to replace it"
    )
    assert report.read_text() == "quarterly report\n"
    png = tmp_path / "curves.png"
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(png)]) == 0
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(png)]) == 0  # its own: replaced
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(report), "--force"]) == 0
    assert report.read_bytes() == png.read_bytes()  # the same drawing
    from lt.cli.plot import written_by_lt_plot

    assert written_by_lt_plot(png) and not written_by_lt_plot(run / "run.json")


@needs_matplotlib
def test_plot_refuses_a_png_it_did_not_write(run, tmp_path, capsys):
    from matplotlib.figure import Figure

    theirs = tmp_path / "theirs.png"
    Figure().savefig(theirs)  # a PNG, but not lt's
    before = theirs.read_bytes()
    assert lt.cli.main(["plot", "--run", str(run), "--out", str(theirs)]) == 2
    assert "is not a plot lt wrote" in error_line(capsys)
    assert theirs.read_bytes() == before


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=300))
def test_no_arbitrary_bytes_pass_for_a_file_lt_wrote(tmp_path_factory, content):
    from lt.cli.inference import written_by_lt_quantize
    from lt.cli.plot import written_by_lt_plot

    path = tmp_path_factory.mktemp("bytes") / "f"
    for prefix in (b"", b"\x89PNG\r\n\x1a\n"):
        path.write_bytes(prefix + content)
        assert not written_by_lt_plot(path) and not written_by_lt_quantize(path)


@pytest.mark.parametrize(
    "exists,ours,force,allowed",
    [
        (False, False, False, True),
        (True, True, False, True),
        (True, False, False, False),
        (True, False, True, True),
    ],
)
def test_check_overwrite_replaces_only_what_lt_wrote_or_is_forced(tmp_path, exists, ours, force, allowed):
    path = tmp_path / "f.bin"
    if exists:
        path.write_bytes(b"x")
    asked = []

    def is_ours(p):
        asked.append(p)
        return ours

    if allowed:
        files.check_overwrite(path, is_ours, force=force, ours="a test file")
    else:
        with pytest.raises(FileExistsError, match=r"f\.bin already exists and is not a test file"):
            files.check_overwrite(path, is_ours, force=force, ours="a test file")
    assert asked == ([path] if exists and not force else [])  # asked of an existing file only


# ----------------------------------------------------------------- 3. a directory as --out


def test_quantize_and_plot_name_a_directory_given_as_out(run, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    commands = [["quantize", "--run", str(run), "--out", str(folder)]]
    if has_matplotlib():
        commands.append(["plot", "--run", str(run), "--out", str(folder)])
    for argv in commands:
        for force in ([], ["--force"]):
            assert lt.cli.main(argv + force) == 2
            assert error_line(capsys) == f"lt: error: {folder} is a directory; expected the path of a file to write"
    assert list(folder.iterdir()) == []


def test_a_missing_folder_is_named_not_the_temporary_file(tmp_path):
    target = tmp_path / "no" / "such" / "x.bin"
    with pytest.raises(FileNotFoundError) as caught:
        files.atomic_write(target, [b"x"])
    assert caught.value.filename == str(target) and ".tmp" not in str(caught.value)


# ----------------------------------------------------------------- 4. group sizes past the matrix


@settings(max_examples=80, deadline=None)
@given(
    R=st.integers(1, 6),
    K=st.integers(1, 40),
    extra=st.integers(0, 100),
    bits=st.sampled_from([8, 4]),
    axis=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**31),
)
def test_a_group_larger_than_a_row_is_one_group_per_row(R, K, extra, bits, axis, seed):
    w = np.random.default_rng(seed).standard_normal((K, R) if axis == 0 else (R, K)).astype(np.float32)
    G = K + (K % 2 if bits == 4 else 0) + extra  # at least the channel's group
    q, channel = quantize_array(w, bits, G, axis), quantize_array(w, bits, "channel", axis)
    assert q.group_size == channel.group_size == K + (K % 2 if bits == 4 else 0)
    assert np.array_equal(q.codes, channel.codes) and np.array_equal(q.scales, channel.scales)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_huge_group_size_quantizes_at_once_per_row(bits):
    q = lt.quantize(P32, bits, 1_000_000_000, model=TINY)
    leaf = q["blocks"][0]["attn"]["qkv"]["w"]  # (32, 96): rows of 32 weights
    assert leaf.group_size == 32 and leaf.num_groups == 1
    assert tree.nbytes(q) == quant.planned_nbytes(TINY.spec(), bits, 1_000_000_000)


def test_lt_quantize_with_a_huge_group_size_writes_one_scale_per_row(run, tmp_path):
    out = tmp_path / "q.safetensors"
    assert (
        lt.cli.main(["quantize", "--run", str(run), "--bits", "4", "--group-size", "1000000000", "--out", str(out)])
        == 0
    )
    params = checkpoint.load(out).params
    assert all(x.num_groups == 1 for x in tree.leaves(params) if quant.is_quantized(x))


# ----------------------------------------------------------------- 5. one read of the checkpoint


def test_quantize_labels_the_params_with_their_own_step(run, tmp_path, monkeypatch):
    """A newer checkpoint renamed over the run's right after a read of it: the quantized file
    holds params and a step of one and the same checkpoint."""
    ck = checkpoint.load(run / "checkpoint.safetensors")
    newer = tree.map(lambda x: x * 2 + 1, ck.params)
    params_at = {ck.step: ck.params, ck.step + 1: newer}
    real_load, replaced = checkpoint.load, []

    def load_then_replace(path, *args, **kwargs):
        result = real_load(path, *args, **kwargs)
        if not replaced and os.path.samefile(path, run / "checkpoint.safetensors"):
            replaced.append(True)
            checkpoint.save(run / "checkpoint.safetensors", ck.model, newer, step=ck.step + 1)
        return result

    monkeypatch.setattr(checkpoint, "load", load_then_replace)
    out = tmp_path / "q.safetensors"
    assert lt.cli.main(["quantize", "--run", str(run), "--out", str(out)]) == 0
    assert replaced
    written = real_load(out)
    expected = lt.quantize(params_at[written.step], 8, model=ck.model)
    assert all(
        np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
        for a, b in zip(tree.leaves(written.params), tree.leaves(expected))
        if quant.is_quantized(a)
    )


# ----------------------------------------------------------------- 6. empty matrices


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 9),
    empty_first=st.booleans(),
    bits=st.sampled_from([8, 4]),
    group=st.sampled_from([None, "channel", 2, 32]),
    axis=st.sampled_from([0, 1]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_an_empty_matrix_quantizes_to_an_empty_leaf(n, empty_first, bits, group, axis, dtype):
    w = np.zeros((0, n) if empty_first else (n, 0), dtype)
    q = quantize_array(w, bits, group, axis)
    assert q.shape == w.shape and q.dtype == w.dtype and q.nbytes == 0
    back = dequantize_array(q)
    assert back.shape == w.shape and back.dtype == w.dtype


# ----------------------------------------------------------------- 7. bits of the wrong type


@pytest.mark.parametrize("bits", [8.0, 4.0, "8", True, None])
def test_bits_that_are_not_the_integer_8_or_4_are_named(bits):
    message = f"bits must be 8 or 4 (an int), got {bits!r}"
    with pytest.raises(ValueError) as caught:
        lt.quantize(P32, bits=bits, model=TINY)
    assert str(caught.value) == message
    with pytest.raises(ValueError) as caught:
        quantize_array(np.ones((2, 4), np.float32), bits)
    assert str(caught.value) == message


def test_numpy_integer_bits_are_accepted():
    q = quantize_array(np.ones((2, 4), np.float32), np.int64(4))
    assert q.bits == 4 and type(q.bits) is int


# ----------------------------------------------------------------- 8. one "lt: error:" prefix


@pytest.mark.parametrize(
    "argv,line",
    [
        (
            ["quantize", "--run", "r", "--bits", "5"],
            "lt: error: quantize: argument --bits: invalid choice: 5 (choose from 8, 4)",
        ),
        (["plot", "--run", "r", "--nope"], "lt: error: unrecognized arguments: --nope"),
        (["plot"], "lt: error: plot: the following arguments are required: --run"),
        (
            ["--nope"],
            "lt: error: give a command: train, generate, quantize, eval, info, plot, export, chat, serve "
            "(lt --help says what each does)",
        ),
        (
            ["generate"],
            "lt: error: give --run DIR (a run of lt train), --gguf FILE or --hf DIR|NAME (a Hugging Face model), "
            "one of them",
        ),
    ],
)
def test_an_error_line_says_lt_error_once(argv, line, capsys):
    assert lt.cli.main(argv) == 2
    assert error_line(capsys) == line


# ----------------------------------------------------------------- 9. --time that overflows


@pytest.mark.parametrize("text", ["9" * 400, "9" * 306 + "h", "1e400"])
def test_an_overflowing_time_names_the_time_flag(text, tmp_path, capsys):
    assert lt.cli.main(["train", "--time", text, "--out", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert line.startswith("lt: error: --time must be a ") and f"got {text!r}" in line, line
    assert "--time-budget" not in line and "inf" not in line.split("got")[0]
    assert not (tmp_path / "run").exists()
