"""The package's dependencies point one way (shared/DESIGN.md): tree/random -> ops -> autodiff
-> nn -> optim/generate/training -> cli. Checked on the import statements themselves."""

import ast
import pathlib

import pytest

LT = pathlib.Path(__file__).resolve().parent.parent / "lt"

# module (or package) -> the lt modules it must never import, at any level of the file
FORBIDDEN = {
    "threads": {"tree", "random", "_checks", "quant", "ops", "nn", "generate", "optim", "training", "autodiff", "cli"},
    "_checks": {"tree", "random", "ops", "nn", "generate", "optim", "training", "cli"},
    "ops": {"nn", "generate", "optim", "training", "autodiff", "cli"},
    "quant": {"random", "ops", "nn", "generate", "optim", "training", "autodiff", "cli", "checkpoint"},
    "nn": {"generate", "optim", "training", "cli", "checkpoint", "runs", "hf"},
    "generate": {"training", "optim", "cli", "runs"},
}


def _lt_imports(path: pathlib.Path, top_level_only: bool) -> set[str]:
    """The first component of every lt module ``path`` imports (relative imports resolved)."""
    package = path.relative_to(LT).parts[:-1]
    nodes = ast.parse(path.read_text()).body if top_level_only else list(ast.walk(ast.parse(path.read_text())))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - (node.level - 1)])
                parts = base + (node.module.split(".") if node.module else [])
                targets = [parts] if node.module else [base + [a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "lt":
                targets = [node.module.split(".")[1:]]
            else:
                continue
            names.update(t[0] for t in targets if t)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lt."))
    return names


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one_at_load_time(unit):
    files = [LT / f"{unit}.py"] if (LT / f"{unit}.py").exists() else sorted((LT / unit).rglob("*.py"))
    assert files
    for path in files:
        bad = _lt_imports(path, top_level_only=True) & FORBIDDEN[unit]
        assert not bad, f"{path.relative_to(LT)} imports {sorted(bad)}"


def test_the_only_import_from_nn_to_generate_is_the_generate_forwarder():
    uses = [p.name for p in sorted((LT / "nn").rglob("*.py")) if "generate" in _lt_imports(p, top_level_only=False)]
    assert uses == ["gpt.py"]
    source = (LT / "nn" / "gpt.py").read_text()
    assert source.count("from ..generate import") == 1 and "    def generate(" in source
