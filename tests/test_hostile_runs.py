"""Run directories under hostile conditions (issue 14): two writers, killed writers, user files,
hand-edited settings, changed data, and the messages a user gets. Everything runs in this
process through ``lt.cli.main`` on a tiny model and a small data file, except the processes
that hold a run's lock."""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

import lt
import lt.cli
from lt import parallel, runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer.\n" * 30


def tiny(data, out, steps=2, *more):
    return ["train", "--recipe", "nanogpt", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--seed", "5",
            "--sample-tokens", "0", "--checkpoint-every", "2", "--eval-every", "2",
            "--data", str(data), "--steps", str(steps), "--out", str(out), *more]


def error_line(capsys) -> str:
    """The one ``lt: error:`` line the command printed."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lt: error:"), lines
    return lines[0]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run with a checkpoint, and its data file; tests use copies of it."""
    base = tmp_path_factory.mktemp("hostile")
    data = base / "text.txt"
    data.write_text(TEXT)
    assert lt.cli.main(tiny(data, base / "run")) == 0
    return base / "run", data


@pytest.fixture
def run(trained, tmp_path):
    src, data = trained
    return pathlib.Path(shutil.copytree(src, tmp_path / "run")), data


def hold_lock(out: pathlib.Path) -> subprocess.Popen:
    """A process that opens ``out`` as a new run (taking its lock) and waits to be killed."""
    code = ("import sys, time, lt.runs as r\n"
            "lock = r.open_run(r.RunFiles(sys.argv[1]), new=True)\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ----------------------------------------------------------------- 1. one writer per run

def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path, data, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        assert lt.cli.main(tiny(data, out)) == 2
        line = error_line(capsys)
        assert f"in use by another lt process (pid {holder.pid})" in line
        assert not (out / "run.json").exists() and not (out / "checkpoint.safetensors").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)     # the file stays; the lock does not
    assert lt.cli.main(tiny(data, out)) == 0
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == 2


def test_resume_is_refused_while_another_process_writes_the_run(run, capsys):
    out, data = run
    before = (out / "checkpoint.safetensors").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, fcntl, os\n"
         "fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, b'%d' % os.getpid())\n"
         "print('locked', flush=True); time.sleep(600)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lt.cli.main(tiny(data, out, 4, "--resume")) == 2
        assert f"(pid {holder.pid})" in error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_the_lock_is_held_while_training_and_released_after(run, monkeypatch):
    import fcntl
    out, data = run
    seen = []

    def probing_train(*args, **kwargs):
        fd = os.open(out / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(os.pread(fd, 32, 0).decode().strip())
        finally:
            os.close(fd)
        return real_train(*args, **kwargs)
    real_train = lt.cli.train_command.train
    monkeypatch.setattr(lt.cli.train_command, "train", probing_train)
    assert lt.cli.main(tiny(data, out, 4, "--resume")) == 0
    assert seen == [str(os.getpid())]
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)           # released: free to take
    finally:
        os.close(fd)


# ----------------------------------------------------------------- 2. runs that died early

def test_a_run_that_failed_before_its_first_checkpoint_starts_over(tmp_path, data, monkeypatch, capsys):
    out = tmp_path / "run"

    def failing_train(*args, **kwargs):
        raise lt.training.NonFiniteError("step 0: loss nan")
    monkeypatch.setattr(lt.cli.train_command, "train", failing_train)
    assert lt.cli.main(tiny(data, out)) == 2
    assert "loss nan" in error_line(capsys)
    assert (out / "run.json").exists() and not (out / "checkpoint.safetensors").exists()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 9.9}\n')
    stale = out / ".checkpoint.safetensors.99999.0123abcd.tmp"           # a writer killed mid-write
    stale.write_bytes(b"half")
    monkeypatch.undo()

    assert lt.cli.main(tiny(data, out, 2, "--resume")) == 2
    assert "has no checkpoint: the run stopped before its first one; start it over without --resume" \
        in error_line(capsys)
    assert lt.cli.main(tiny(data, out, 2, "--log-every", "2")) == 0
    assert "stopped before its first checkpoint; starting it over" in capsys.readouterr().err
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == 2
    assert not stale.exists()
    assert [json.loads(r)["step"] for r in (out / "log.jsonl").read_text().splitlines()] == [2]


def test_a_run_with_a_checkpoint_is_still_never_overwritten(run, capsys):
    out, data = run
    before = (out / "checkpoint.safetensors").read_bytes()
    assert lt.cli.main(tiny(data, out)) == 2
    assert "already holds a run; continue it with --resume" in error_line(capsys)
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_a_bad_data_file_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert lt.cli.main(tiny(tmp_path / "missing.txt", out)) == 2
    assert "does not exist" in error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------- 3. user files

def test_a_non_empty_folder_that_is_not_a_run_is_refused(tmp_path, data, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sample.txt").write_text("my notes")
    (out / "log.jsonl").write_text("my log\n")
    assert lt.cli.main(tiny(data, out)) == 2
    assert f"{out} is not empty and holds no lt run" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "sample.txt"]
    assert (out / "sample.txt").read_text() == "my notes" and (out / "log.jsonl").read_text() == "my log\n"


def test_an_empty_folder_is_used(tmp_path, data):
    out = tmp_path / "empty"
    out.mkdir()
    assert lt.cli.main(tiny(data, out)) == 0


def test_a_symlinked_log_is_never_written_through(run, tmp_path, capsys):
    out, data = run
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (out / "log.jsonl").unlink()
    (out / "log.jsonl").symlink_to(target)
    assert lt.cli.main(tiny(data, out, 4, "--resume")) == 2
    assert f"{out / 'log.jsonl'} is a symbolic link" in error_line(capsys)
    assert target.read_text() == "precious\n"
    with pytest.raises(OSError) as e:                       # and the log is opened without following one
        runs.RunFiles(out).open_log()
    assert e.value.errno == errno.ELOOP and target.read_text() == "precious\n"


def test_a_symlinked_sample_is_refused_before_training(run, tmp_path, capsys):
    out, data = run
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (out / "sample.txt").symlink_to(target)
    assert lt.cli.main(tiny(data, out, 4, "--resume")) == 2
    assert "sample.txt is a symbolic link" in error_line(capsys)
    assert target.read_text() == "precious\n" and lt.checkpoint.load(out / "checkpoint.safetensors").step == 2


# ----------------------------------------------------------------- 4. hand-edited run.json

@pytest.mark.parametrize("field,value,named", [
    ("seq_len", "32", "RunSettings.seq_len must be a positive integer"),
    ("seq_len", 100_000_000, "RunSettings.seq_len must be at most the model's max_seq_len 16"),
    ("model", "tiny", "RunSettings.model must be a dict"),
    ("model", {"vocab_size": 10}, "RunSettings.model is not a valid lt.GPT config"),
    ("data", 5, "'data' must be <class 'str'>"),
    ("steps", "twenty", "RunSettings.steps must be a positive integer"),
    ("steps", 25.5, "RunSettings.steps must be a positive integer"),
    ("seed", "x", "RunSettings.seed must be an integer"),
    ("batch_size", 0, "RunSettings.batch_size must be a positive integer"),
    ("batch_size", -3, "RunSettings.batch_size must be a positive integer"),
    ("checkpoint_every", -1, "RunSettings.checkpoint_every must be a positive integer"),
    ("data_sha256", "abc", "RunSettings.data_sha256 must be a SHA-256 hex digest"),
])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_bad_field_in_run_json_is_refused_naming_field_and_file(run, capsys, field, value, named, command):
    out, data = run
    settings = json.loads((out / "run.json").read_text())
    settings[field] = value
    (out / "run.json").write_text(json.dumps(settings))
    argv = ["eval", "--run", str(out)] if command == "eval" else ["train", "--out", str(out), "--resume"]
    assert lt.cli.main(argv) == 2
    line = error_line(capsys)
    assert f"{out / 'run.json'} is not a valid run settings file" in line and named in line, line


def test_seq_len_too_long_for_memory_is_refused_before_anything_is_made(tmp_path, data, capsys):
    out = tmp_path / "run"
    argv = tiny(data, out)
    argv[argv.index("--seq-len") + 1] = "100000000"
    assert lt.cli.main(argv) == 2
    line = error_line(capsys)
    assert line.startswith("lt: error: --seq-len 100000000 needs about ") and "lower --seq-len" in line, line
    assert not out.exists()


# ----------------------------------------------------------------- 5. silent wrong results

def test_zero_beams_is_refused(run, capsys):
    out, _ = run
    assert lt.cli.main(["generate", "--run", str(out), "--prompt", "To", "--beams", "0"]) == 2
    assert "--beams: must be > 0, got 0" in error_line(capsys)


def test_resume_refuses_an_edited_data_file(run, capsys):
    out, data = run
    settings = json.loads((out / "run.json").read_text())
    assert settings["data_bytes"] == len(TEXT.encode()) and len(settings["data_sha256"]) == 64
    data.write_text(TEXT.replace("nobler", "humbler"))
    try:
        assert lt.cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 2
        line = error_line(capsys)
        assert f"data {data} changed since the run was made" in line and "start a new run" in line
        assert lt.checkpoint.load(out / "checkpoint.safetensors").step == 2
    finally:
        data.write_text(TEXT)


def test_a_run_json_from_before_the_data_fingerprint_still_resumes(run):
    out, data = run
    settings = json.loads((out / "run.json").read_text())
    del settings["data_bytes"], settings["data_sha256"]
    (out / "run.json").write_text(json.dumps(settings))
    assert lt.cli.main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == 3


def test_resume_with_more_steps_records_them_in_run_json(run):
    out, _ = run
    assert lt.cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert json.loads((out / "run.json").read_text())["steps"] == 4
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == 4


def test_resume_to_fewer_steps_than_done_is_refused_and_changes_nothing(run, capsys):
    out, _ = run
    before = (out / "run.json").read_text()
    assert lt.cli.main(["train", "--out", str(out), "--resume", "--steps", "1"]) == 2
    assert "--steps 1 is before the run's step 2" in error_line(capsys)
    assert (out / "run.json").read_text() == before


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
    ("--lr", "inf", "--lr must be a finite number > 0, got inf"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0, got nan"),
    ("--min-lr", "-1", "--min-lr must be a finite number >= 0, got -1.0"),
    ("--dropout", "1.5", "dropout"),
])
def test_non_finite_or_negative_rates_are_refused_at_parse_time(tmp_path, data, capsys, flag, value, message):
    out = tmp_path / "run"
    assert lt.cli.main(tiny(data, out, 2, flag, value)) == 2
    assert message in error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------- 6. messages that say what is wrong

def test_data_naming_a_directory_says_so(tmp_path, capsys):
    assert lt.cli.main(tiny(tmp_path, tmp_path / "run")) == 2
    assert error_line(capsys) == f"lt: error: data file {tmp_path} is a directory; give a text file"


def test_non_utf8_data_names_the_file(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait\n".encode("latin-1") * 20)
    assert lt.cli.main(tiny(bad, tmp_path / "run")) == 2
    line = error_line(capsys)
    assert f"data file {bad} is not UTF-8 text: byte 0xe9 at offset 3" in line
    assert not (tmp_path / "run").exists()


def test_a_full_disk_names_the_file(tmp_path, data, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        lt.files.atomic_write_text(tmp_path / "x.json", "{}")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == [data]                    # no temporary file left
    assert lt.cli.main(tiny(data, tmp_path / "run")) == 2
    assert "No space left on device" in (line := error_line(capsys)) and "tokenizer.json" in line


def test_a_full_disk_while_logging_names_the_log(run, monkeypatch, capsys):
    out, _ = run

    class FullFile:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            pass
    monkeypatch.setattr(runs.RunFiles, "open_log", lambda self: FullFile())
    assert lt.cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 2
    line = error_line(capsys)
    assert "No space left on device" in line and "log.jsonl" in line


def test_a_tokenizer_from_another_run_is_refused_at_load(run, capsys):
    out, _ = run
    lt.tokenizers.CharTokenizer.fit("abc").save(out / "tokenizer.json")
    assert lt.cli.main(["generate", "--run", str(out), "--prompt", "a"]) == 2
    line = error_line(capsys)
    assert "tokenizer.json has 3 tokens but the model in" in line and "not from the same run" in line


def test_beam_search_with_a_prompt_longer_than_the_context_says_so(run, capsys):
    out, _ = run
    prompt = "To be, or not to be, that is"                          # 28 tokens; the context is 16
    assert lt.cli.main(["generate", "--run", str(out), "--prompt", prompt, "--beams", "2"]) == 2
    assert error_line(capsys) == ("lt: error: the prompt is 28 tokens; beam search needs it shorter than the "
                                  "model's context of 16 tokens")


@pytest.mark.parametrize("env", [{"PMI_SIZE": "1", "PMI_RANK": "0"}, {"PMI_RANK": "0"}, {"PMIX_RANK": "0"},
                                 {"OMPI_COMM_WORLD_SIZE": "1"}])
def test_a_launcher_of_one_rank_without_mpi4py_is_a_single_process(monkeypatch, env):
    for var in parallel.mpi._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "mpi4py.run" in sys.modules or "mpi4py.MPI" in sys.modules:
        pytest.skip("this pytest itself runs under MPI")
    monkeypatch.setitem(sys.modules, "mpi4py", None)                 # as if it were not installed
    assert parallel.world() == parallel.SINGLE
    with pytest.raises(ImportError, match="needs mpi4py"):
        parallel.world(mpi=True)                                    # --mpi still asks for it


def test_a_launcher_of_several_ranks_without_mpi4py_is_refused(monkeypatch):
    for var in parallel.mpi._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match="launched as one of 4 MPI ranks"):
        parallel.world()


def test_train_with_pmi_size_one_runs_single_process(tmp_path, data, monkeypatch):
    for var in parallel.mpi._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    if "mpi4py.run" in sys.modules or "mpi4py.MPI" in sys.modules:
        pytest.skip("this pytest itself runs under MPI")
    monkeypatch.setenv("PMI_SIZE", "1")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert lt.cli.main(tiny(data, tmp_path / "run")) == 0
