"""core.blas: OpenBLAS really speeds up mlx matmuls on Linux, children get it too, opt-out and macOS untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import blas

needs_openblas = pytest.mark.skipif(
    not blas.is_linux() or blas.find_openblas() is None,
    reason=f"OpenBLAS not installed ({blas.INSTALL_HINT})",
)

MEASURE = (
    "import json, sys\n"
    "from core import blas\n"
    "if 'ensure' in sys.argv: blas.ensure_fast_blas()\n"
    "print(json.dumps({'gflops': blas.matmul_gflops(384, seconds=0.2), 'blas': blas.blas_status()['blas']}))\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas.CHOICE_ENV, blas.NOTE_SHOWN_ENV)
    }
    return {**env, **extra}


def run_python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


def measure(env: dict[str, str], *args: str) -> dict:
    return json.loads(run_python(MEASURE, env, *args).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference() -> dict:
    return measure(clean_env(**{blas.CHOICE_ENV: "reference"}), "ensure")


@needs_openblas
def test_ensure_fast_blas_makes_matmul_much_faster(reference):
    fast = measure(clean_env(), "ensure")
    assert reference["blas"] == "reference" and fast["blas"] == "openblas"
    assert fast["gflops"] >= 3 * reference["gflops"], (fast, reference)


@needs_openblas
def test_child_environment_speeds_up_a_child_that_never_calls_ensure(reference):
    env = blas.child_environment(clean_env())
    assert blas.find_openblas() in env["LD_PRELOAD"].split(":")
    child = measure(env)  # plain mlx import, as in `python -m mlx_lm server`
    assert child["blas"] == "openblas"
    assert child["gflops"] >= 3 * reference["gflops"], (child, reference)
    assert blas.child_environment(env)["LD_PRELOAD"] == env["LD_PRELOAD"]  # no duplicate on re-wrap


@needs_openblas
def test_warns_when_mlx_was_imported_first():
    code = "import mlx.core\nfrom core import blas\nprint(blas.ensure_fast_blas(), blas.blas_status()['blas'])"
    result = run_python(code, clean_env())
    assert result.stdout.split() == ["None", "reference"]
    assert "called after mlx was imported" in result.stderr


@needs_openblas
def test_bundled_fortran_runtime_stands_in_for_a_missing_libgfortran(tmp_path):
    """With the wheel's libgfortran copy (renamed to libgfortran.so.5) OpenBLAS loads without the system one."""
    if blas.mlx_cpu_libs() is None:
        pytest.skip("no mlx_cpu.libs (not the mlx[cpu] wheel)")
    code = (
        "import ctypes, json\n"
        "import numpy as np\n"
        "from core import blas\n"
        "for lib in [*blas.bundled_fortran_runtime(), blas.find_openblas()]:\n"
        "    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)\n"
        "import mlx.core as mx\n"
        "x = np.random.default_rng(0).standard_normal((48, 48)).astype(np.float32)\n"
        "inverse = np.array(mx.linalg.inv(mx.array(x), stream=mx.cpu))\n"
        "fortran = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgfortran' in l})\n"
        "print(json.dumps({'status': blas.blas_status(), 'fortran': fortran,\n"
        "                  'error': float(np.abs(inverse @ x - np.eye(48)).max())}))\n"
    )
    out = json.loads(run_python(code, clean_env(FLYWHEEL_CACHE=str(tmp_path))).stdout)
    assert out["status"]["blas"] == "openblas"
    # the renamed copy is what satisfied OpenBLAS (the wheel's hashed copy may be mapped too, for mlx itself)
    assert any(path.startswith(str(tmp_path)) for path in out["fortran"]), out["fortran"]
    assert not any(path.startswith("/usr/") for path in out["fortran"]), out["fortran"]
    assert out["error"] < 1e-3  # LAPACK (from OpenBLAS, on the bundled Fortran runtime) computes right


def test_opt_out_leaves_everything_alone(monkeypatch):
    monkeypatch.setenv(blas.CHOICE_ENV, "reference")
    assert blas.ensure_fast_blas() is None
    env = {"PATH": "/usr/bin", blas.CHOICE_ENV: "reference"}
    assert blas.child_environment(env) == env
    assert blas.blas_status()["opted_out"] is True


def test_macos_is_never_touched(monkeypatch):
    monkeypatch.setattr(blas.platform, "system", lambda: "Darwin")

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a library on macOS")

    monkeypatch.setattr(blas.ctypes, "CDLL", no_loading)
    monkeypatch.delenv(blas.CHOICE_ENV, raising=False)
    assert blas.ensure_fast_blas() is None
    env = {"PATH": "/usr/bin", "LD_PRELOAD": ""}
    assert blas.child_environment(env) == env
    assert blas.blas_status()["blas"] == "accelerate"


MISSING = (
    "from core import blas\n"
    "blas.find_openblas = lambda: None\n"
    "print(blas.ensure_fast_blas(), blas.ensure_fast_blas())\n"
    "import os, subprocess, sys\n"
    "child = 'from core import blas; blas.find_openblas = lambda: None; blas.ensure_fast_blas()'\n"
    "subprocess.run([sys.executable, '-c', child], env=blas.child_environment(dict(os.environ)), check=True)\n"
)


def test_missing_openblas_prints_one_install_note_per_process_tree():
    result = run_python(MISSING, clean_env())
    assert result.stdout.strip() == "None None"
    assert result.stderr.count(blas.INSTALL_HINT) == 1, result.stderr  # parent twice + child: one note
    already = run_python(MISSING, clean_env(**{blas.NOTE_SHOWN_ENV: "1"}))
    assert already.stderr == ""


def test_bad_library_path_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(blas.CHOICE_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(FileNotFoundError, match=f"{blas.CHOICE_ENV}=.*nope.so"):
        blas.find_openblas()


def test_set_soname_rewrites_and_refuses_longer_names(tmp_path):
    libs = blas.mlx_cpu_libs()
    if libs is None:
        pytest.skip("no mlx_cpu.libs")
    library = tmp_path / "libquadmath.so.0"
    shutil.copyfile(next(libs.glob("libquadmath*")), library)
    blas.set_soname(library, "libquadmath.so.0")
    readelf = shutil.which("readelf")
    if readelf:
        dynamic = subprocess.run([readelf, "-d", str(library)], capture_output=True, text=True).stdout
        assert "Library soname: [libquadmath.so.0]" in dynamic
    with pytest.raises(ValueError, match="longer"):
        blas.set_soname(library, "x" * 200)
    not_elf = tmp_path / "text.so"
    not_elf.write_text("hello")
    with pytest.raises(ValueError, match="text.so: not a 64-bit"):
        blas.set_soname(not_elf, "a")


@needs_openblas
def test_mlx_server_child_runs_on_openblas(tmp_path):
    """core.process starts `mlx_lm server` with child_environment: the real server process maps OpenBLAS."""
    from core.process import MlxServer
    from models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", seed=0)
    with MlxServer(model) as server:
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "openblas" in maps


@needs_openblas
@pytest.mark.parametrize("package", ["proxy", "curate", "train", "evaluate", "flywheel", "agent", "models"])
def test_every_package_binds_the_fast_blas_before_mlx_loads(package):
    """No entry point calls ensure_fast_blas(): importing any of our packages arranges it for the first mlx import."""
    code = f"import {package}\nimport mlx.core\nfrom core import blas\nprint(blas.blas_status()['blas'])"
    assert run_python(code, clean_env()).stdout.split()[-1] == "openblas"
