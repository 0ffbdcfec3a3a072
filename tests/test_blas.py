"""core.blas: a fast BLAS really speeds up mlx matmuls on Linux, from the system or from the wheel `uv sync`
installs; children get it too; explicit choices, the opt-out, the one-time note, and macOS untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core import blas

needs_openblas = pytest.mark.skipif(
    not blas.is_linux() or blas.find_openblas() is None,
    reason=f"OpenBLAS not installed ({blas.INSTALL_HINT})",
)
needs_wheel = pytest.mark.skipif(
    not blas.is_linux() or blas.wheel_openblas() is None,
    reason="the ngsolve-openblas wheel is not installed (`uv sync` installs it on Linux x86_64)",
)
needs_system = pytest.mark.skipif(
    not blas.is_linux() or blas.system_openblas() is None,
    reason=f"no system OpenBLAS ({blas.INSTALL_HINT})",
)
ROOT = Path(__file__).resolve().parent.parent
# A machine without the apt package: no distribution OpenBLAS, no libgfortran5 (patched before mlx loads).
NO_SYSTEM_BLAS = (
    "from core import blas\n"
    "blas.system_candidates = lambda: ['/nonexistent/libopenblas.so.0']\n"
    "blas.ctypes.util.find_library = lambda name: None\n"
    "blas.system_fortran_runtime = lambda: False\n"
)

MEASURE = (
    "import json, sys\n"
    "from core import blas\n"
    "if 'ensure' in sys.argv: blas.ensure_fast_blas()\n"
    "print(json.dumps({'gflops': blas.matmul_gflops(384, seconds=0.2), 'blas': blas.blas_status()['blas']}))\n"
)


THREAD_VARIABLES = {name for chosen, _ in blas.THREAD_DEFAULTS.values() for name in chosen}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment as a user's shell has it: without what binding the BLAS in this process added."""
    drop = {"LD_PRELOAD", blas.CHOICE_ENV, blas.NOTE_SHOWN_ENV, *THREAD_VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in drop}
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
@pytest.mark.parametrize(
    "choice",
    [
        "auto",
        pytest.param("system", marks=needs_system),
        pytest.param("wheel", marks=needs_wheel),
    ],
)
def test_ensure_fast_blas_makes_matmul_much_faster(reference, choice):
    fast = measure(clean_env(**{blas.CHOICE_ENV: choice}), "ensure")
    assert reference["blas"] == "reference" and fast["blas"] == "openblas"
    assert fast["gflops"] >= 3 * reference["gflops"], (fast, reference)


@needs_wheel
def test_without_the_apt_package_the_wheel_openblas_is_used_parent_and_child(reference, tmp_path):
    """A machine with no system OpenBLAS and no libgfortran5: the OpenBLAS that `uv sync` installed is bound,
    on the Fortran runtime of the mlx[cpu] wheel, silently; a child started with child_environment maps it too."""
    code = NO_SYSTEM_BLAS + (
        "import json, os, subprocess, sys\n"
        "library = blas.ensure_fast_blas()\n"
        "status = blas.blas_status()\n"
        "gflops = blas.matmul_gflops(384, seconds=0.2)\n"
        "env = blas.child_environment(dict(os.environ))\n"
        "child = subprocess.run([sys.executable, '-c', sys.argv[1]], env=env, capture_output=True, text=True)\n"
        "print(json.dumps({'library': library, 'status': status, 'gflops': gflops, 'preload': env['LD_PRELOAD'],\n"
        "                  'child': json.loads(child.stdout.splitlines()[-1]), 'child_err': child.stderr}))\n"
    )
    child = (
        "import json\n"
        "import mlx.core\n"  # a plain mlx import, as in `python -m mlx_lm server`
        "from core import blas\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(json.dumps({'status': blas.blas_status(), 'gflops': blas.matmul_gflops(384, seconds=0.2),\n"
        "                  'fortran': sorted({l.split()[-1] for l in maps.splitlines() if 'libgfortran' in l})}))\n"
    )
    result = run_python(code, clean_env(FLYWHEEL_CACHE=str(tmp_path)), child)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    wheel = blas.wheel_openblas()
    assert out["library"] == wheel and out["status"]["source"] == "wheel", out["status"]
    assert out["status"]["fortran_runtime"].startswith(str(tmp_path)), out["status"]  # the renamed copy
    assert out["gflops"] >= 3 * reference["gflops"], (out["gflops"], reference)
    assert result.stderr == ""  # no note: nothing is missing
    assert out["preload"].split(":")[-1] == wheel
    assert out["child"]["status"]["library"] == os.path.realpath(wheel), out["child"]
    assert out["child"]["status"]["loaded_via"] in ("LD_PRELOAD", "LD_PRELOAD/already loaded")
    assert any(path.startswith(str(tmp_path)) for path in out["child"]["fortran"]), out["child"]
    assert out["child"]["gflops"] >= 3 * reference["gflops"], (out["child"], reference)
    assert out["child_err"] == ""


@needs_openblas
def test_a_library_path_choice_binds_exactly_that_file():
    """FLYWHEEL_BLAS=/path: any library exporting cblas_sgemm, reported by what it is and where it came from."""
    libs = blas.mlx_cpu_libs()
    if libs is None:
        pytest.skip("no mlx_cpu.libs")
    reference_blas = str(next(libs.glob("libblas*.so*")))  # exports cblas_sgemm, like MKL's or BLIS's would
    code = "from core import blas\nimport mlx.core\nimport json\nprint(json.dumps(blas.blas_status()))"
    status = json.loads(run_python(code, clean_env(**{blas.CHOICE_ENV: reference_blas})).stdout)
    assert status["library"] == os.path.realpath(reference_blas)
    assert (status["blas"], status["source"], status["choice"]) == ("other", "path", reference_blas)
    fast = json.loads(run_python(code, clean_env(**{blas.CHOICE_ENV: blas.find_openblas()})).stdout)
    assert fast["blas"] == "openblas" and fast["library"] == os.path.realpath(blas.find_openblas())


@pytest.mark.parametrize("choice", ["system", "wheel", "mkl"])
def test_an_explicit_choice_that_is_not_there_is_an_error_naming_it(monkeypatch, choice):
    monkeypatch.setenv(blas.CHOICE_ENV, choice.upper())  # names are case-insensitive
    monkeypatch.setattr(blas, "system_candidates", lambda: [])
    monkeypatch.setattr(blas.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(blas, "wheel_openblas", lambda: None)
    monkeypatch.setattr(blas, "mkl_library", lambda: None)
    with pytest.raises(blas.BlasChoiceError, match=f"{blas.CHOICE_ENV}={choice}: .*(apt-get|uv sync|mkl)"):
        blas.find_openblas()


def test_auto_prefers_the_system_openblas_then_the_wheel(monkeypatch, tmp_path):
    system, wheel = tmp_path / "libopenblas.so.0", tmp_path / "libopenblasp-r0.3.33.so"
    system.write_bytes(b"x")
    monkeypatch.delenv(blas.CHOICE_ENV, raising=False)
    monkeypatch.setattr(blas, "system_candidates", lambda: [str(tmp_path / "absent.so"), str(system)])
    monkeypatch.setattr(blas, "wheel_openblas", lambda: str(wheel))
    assert blas.find_openblas() == str(system)
    monkeypatch.setattr(blas, "system_candidates", lambda: [])
    monkeypatch.setattr(blas.ctypes.util, "find_library", lambda name: None)
    assert blas.find_openblas() == str(wheel)
    monkeypatch.setenv(blas.CHOICE_ENV, "reference")
    assert blas.find_openblas() is None


def test_the_wheel_is_locked_for_linux_x86_64_only():
    """macOS (and aarch64 Linux) resolve exactly as before: every edge to ngsolve-openblas has the marker."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    edges = [
        dep
        for package in lock["package"]
        for dep in [*package.get("dependencies", []), *package.get("metadata", {}).get("requires-dist", [])]
        if dep["name"] == "ngsolve-openblas"
    ]
    assert len(edges) == 2, edges
    for dep in edges:
        assert dep["marker"] == "platform_machine == 'x86_64' and sys_platform == 'linux'", dep
    wheel = next(p for p in lock["package"] if p["name"] == "ngsolve-openblas")
    assert all("manylinux" in w["url"] and w["url"].endswith("_x86_64.whl") for w in wheel["wheels"])


@needs_wheel
def test_the_wheel_openblas_needs_a_fortran_runtime_that_the_bundled_copy_provides():
    assert "libgfortran.so.5" in blas.needed_libraries(blas.wheel_openblas())


@needs_openblas
def test_child_environment_speeds_up_a_child_that_never_calls_ensure(reference):
    env = blas.child_environment(clean_env())
    assert blas.find_openblas() in env["LD_PRELOAD"].split(":")
    child = measure(env)  # plain mlx import, as in `python -m mlx_lm server`
    assert child["blas"] == "openblas"
    assert child["gflops"] >= 3 * reference["gflops"], (child, reference)
    assert blas.child_environment(env)["LD_PRELOAD"] == env["LD_PRELOAD"]  # no duplicate on re-wrap


THREADS = (
    "import json, os\n"
    "from core import blas\n"
    "import mlx.core\n"
    "status = blas.blas_status()\n"
    "child = blas.child_environment({'PATH': os.environ['PATH']})\n"
    "print(json.dumps([status['openblas']['threads'], child.get('OPENBLAS_NUM_THREADS')]))\n"
)


@needs_openblas
@pytest.mark.parametrize(
    ("user", "threads", "child"),
    [({}, 1, "1"), ({"OPENBLAS_NUM_THREADS": "2"}, 2, "1"), ({"OMP_NUM_THREADS": "2"}, 2, "1")],
)
def test_one_blas_thread_per_process_unless_the_user_sets_one(user, threads, child):
    """The child gets the default for its own environment (here a bare one); the user's setting wins in its."""
    assert json.loads(run_python(THREADS, clean_env(**user)).stdout) == [threads, child]
    inherited = blas.child_environment(clean_env(**user))
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    assert {name: inherited[name] for name in names if name in inherited} == (user or {names[0]: "1"})


def test_thread_defaults_per_family():
    assert blas.thread_defaults("/v/lib/libmkl_rt.so.3", {}) == {"MKL_THREADING_LAYER": "SEQUENTIAL"}
    assert blas.thread_defaults("/v/lib/libmkl_rt.so.3", {"MKL_NUM_THREADS": "2"}) == {}
    assert blas.thread_defaults("/x/libblis-mt.so.5", {}) == {"BLIS_NUM_THREADS": "1"}
    assert blas.thread_defaults("/x/libopenblasp-r0.3.33.so", {"GOTO_NUM_THREADS": "4"}) == {}
    assert blas.thread_defaults("/x/libcustomblas.so", {}) == {}


@needs_openblas
def test_warns_when_mlx_was_imported_first():
    code = (
        "import mlx.core\nfrom core import blas\nprint(blas.ensure_fast_blas(), blas.blas_status()['blas'])"
    )
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


@pytest.mark.parametrize(
    ("machine", "advice", "not_said"),
    [("aarch64", "apt-get install", "uv sync"), ("x86_64", "uv sync", None)],
)
def test_no_fast_blas_at_all_gives_one_note_that_fits_the_machine(machine, advice, not_said):
    """aarch64 Linux has no wheel: it keeps the system library path, and the note says how to get it."""
    code = (
        NO_SYSTEM_BLAS + f"blas.platform.machine = lambda: {machine!r}\n"
        "blas.wheel_openblas = lambda: None\n"
        "import os, subprocess, sys\n"
        "import mlx.core\n"  # through the import hook, as every entry point does
        "print(blas.ensure_fast_blas(), blas.blas_status()['blas'])\n"
        "child = 'from core import blas; blas.wheel_openblas = lambda: None; blas.system_candidates = list; "
        "blas.ctypes.util.find_library = lambda n: None; import mlx.core'\n"
        "subprocess.run([sys.executable, '-c', child], env=blas.child_environment(dict(os.environ)), check=True)\n"
    )
    result = run_python(code, clean_env())
    assert result.stdout.split() == ["None", "reference"]
    assert result.stderr.count("flywheel: no OpenBLAS found") == 1, result.stderr
    assert advice in result.stderr and blas.INSTALL_HINT in result.stderr
    assert not_said is None or not_said not in result.stderr


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
@pytest.mark.parametrize("choice", ["auto", pytest.param("wheel", marks=needs_wheel)])
def test_mlx_server_child_runs_on_openblas(tmp_path, monkeypatch, choice):
    """core.process starts `mlx_lm server` with child_environment: the real server process maps OpenBLAS,
    the library this process uses (auto) or the one FLYWHEEL_BLAS names, and answers a chat on it."""
    import openai

    from core.process import MlxServer
    from models.tiny import build_tiny_model

    monkeypatch.setenv(blas.CHOICE_ENV, choice)
    if choice != "auto":  # as if this process had not bound one yet: the choice decides
        monkeypatch.setitem(blas._state, "library", None)
    expected = os.path.realpath(blas._state["library"] or blas.find_openblas())
    model = build_tiny_model(tmp_path / "tiny", seed=0)
    with MlxServer(model, max_tokens=4) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": "hi"}])
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "openblas" in maps
    assert expected in maps, expected


@needs_openblas
@pytest.mark.parametrize("package", ["proxy", "curate", "train", "evaluate", "flywheel", "agent", "models"])
def test_every_package_binds_the_fast_blas_before_mlx_loads(package):
    """No entry point calls ensure_fast_blas(): importing any of our packages arranges it for the first mlx import."""
    code = f"import {package}\nimport mlx.core\nfrom core import blas\nprint(blas.blas_status()['blas'])"
    assert run_python(code, clean_env()).stdout.split()[-1] == "openblas"
