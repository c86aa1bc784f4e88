"""The kernel choice: LT_KERNELS and kernels.use, numba imported only when a kernel compiles,
and a read-only install whose compiled kernels are cached where the user can write."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lt.ops import kernels
from lt.ops.kernels import select

ROOT = Path(__file__).resolve().parents[1]


def test_environment_chooses_and_use_wins(monkeypatch):
    monkeypatch.setattr(select, "available", lambda: True)
    monkeypatch.setenv("LT_KERNELS", "numpy")
    assert kernels.active() == "numpy"
    with kernels.use("numba"):
        assert kernels.enabled()
        with kernels.use("numpy"):
            assert not kernels.enabled()
        assert kernels.enabled()
    assert kernels.active() == "numpy"
    monkeypatch.setenv("LT_KERNELS", "auto")
    assert kernels.active() == "numba"
    monkeypatch.delenv("LT_KERNELS")
    assert kernels.active() == "numba"


def test_without_numba_auto_is_numpy_and_numba_is_an_error(monkeypatch):
    monkeypatch.setattr(select, "available", lambda: False)
    monkeypatch.setenv("LT_KERNELS", "auto")
    assert kernels.active() == "numpy"
    monkeypatch.setenv("LT_KERNELS", "numba")
    with pytest.raises(RuntimeError, match=r"pip install 'lt\[fast\]'"):
        kernels.active()
    monkeypatch.setenv("LT_KERNELS", "numpy")
    with pytest.raises(RuntimeError, match="numba is not installed"), kernels.use("numba"):
        pass


@pytest.mark.parametrize("bad", ["fast", "NUMBAA", "1"])
def test_unknown_choice_is_named(monkeypatch, bad):
    monkeypatch.setenv("LT_KERNELS", bad)
    with pytest.raises(ValueError, match=f"LT_KERNELS='{bad.lower()}': expected one of auto, numba, numpy"):
        kernels.active()
    with pytest.raises(ValueError, match="kernels.use='cuda'"), kernels.use("cuda"):
        pass


def test_importing_lt_imports_no_numba():
    code = "import sys, lt; lt.GPT; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_kernel_runs_as_python_and_compiled(tmp_path):
    """One loop nest, two ways: as Python (prange is range) and compiled, the same numbers."""
    pytest.importorskip("numba")
    import numpy as np

    module = tmp_path / "twice_kernel.py"
    module.write_text(
        "from lt.ops.kernels import kernel, prange\n"
        "@kernel(parallel=True)\n"
        "def twice(x, out):\n"
        "    for i in prange(x.shape[0]):\n"
        "        out[i] = 2 * x[i]\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import twice_kernel
    finally:
        sys.path.remove(str(tmp_path))
    x = np.arange(37, dtype=np.float64)
    by_python, compiled = np.empty_like(x), np.empty_like(x)
    twice_kernel.twice.fn(x, by_python)
    twice_kernel.twice(x, compiled)
    np.testing.assert_array_equal(compiled, 2 * x)
    np.testing.assert_array_equal(by_python, compiled)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_install_caches_where_the_user_can_write(tmp_path):
    """lt copied into a read-only directory: its kernels still compile, cached under the user's cache."""
    pytest.importorskip("numba")
    site = tmp_path / "site"
    shutil.copytree(ROOT / "lt", site / "lt", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(site), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    code = (
        "import numpy as np, lt\n"
        "assert lt.__file__.startswith(%r), lt.__file__\n"
        "x = np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32)\n"
        "with lt.ops.kernels.use('numba'):\n"
        "    y = lt.ops.layer_norm(x, np.ones(32, np.float32), np.zeros(32, np.float32))\n"
        "with lt.ops.kernels.use('numpy'):\n"
        "    np.testing.assert_allclose(y, lt.ops.layer_norm(x, np.ones(32, np.float32), np.zeros(32, np.float32)), atol=1e-5)\n"
    ) % str(site)
    try:
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
        assert not list(site.rglob("*.nbi")), "numba wrote into the read-only install"
        assert list(home.rglob("*.nbi")), "no compiled kernel cached under the user's cache directory"
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_lt_info_says_what_the_primitives_run(monkeypatch, capsys):
    from lt.cli import main

    monkeypatch.setattr(kernels, "available", lambda: True)
    monkeypatch.setenv("LT_KERNELS", "numpy")
    assert main(["info"]) == 0
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith("kernels: the NumPy reference (LT_KERNELS=numpy); unset it for numba's compiled kernels")
    )
    monkeypatch.setattr(select, "available", lambda: False)
    monkeypatch.setattr(kernels, "available", lambda: False)
    monkeypatch.setenv("LT_KERNELS", "auto")
    assert main(["info"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("pip install 'lt[fast]' adds numba's compiled kernels")
