"""Make MLX on a Linux CPU use a fast BLAS (OpenBLAS) instead of the reference BLAS its wheel ships.

The `mlx[cpu]` wheel links `mlx_cpu.libs/libblas-*.so.3`, netlib's reference BLAS (2-6 GFLOP/s on f32
matmuls here). Loading a fast BLAS with RTLD_GLOBAL before `mlx.core` is imported puts its `cblas_sgemm` (and
its LAPACK) first in the process's global symbol scope, so libmlx binds to it when Python loads it. Python
loads extensions with RTLD_NOW, so once mlx is imported it is too late. Processes that are not ours
(`python -m mlx_lm server`) get the same library through LD_PRELOAD (`child_environment`).

Which library (`FLYWHEEL_BLAS`, read before the first `import mlx`):
    auto (default)  the system's OpenBLAS if there is one, else the OpenBLAS that `uv sync` installs on
                    Linux x86_64 (the `ngsolve-openblas` wheel); on other machines (aarch64) a one-time note
    system          the system's OpenBLAS (`apt-get install libopenblas0-pthread`)
    wheel           the `ngsolve-openblas` wheel's OpenBLAS
    mkl             Intel MKL's `libmkl_rt` from a `pip install mkl` in this environment
    /path/lib.so    any library that exports unprefixed `cblas_sgemm` (OpenBLAS, MKL, BLIS...)
    reference       the wheel's reference BLAS: the opt-out (also off, none, no, 0)
An explicit choice that is not there is an error naming the variable; `auto` falls back with a note.
macOS is never touched: MLX uses Metal and Accelerate there.

    from core.blas import ensure_fast_blas
    ensure_fast_blas()          # first, before anything imports mlx (importing `core` arranges it)
    import mlx.core as mx
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
import platform
import shutil
import struct
import sys
import time
import warnings
from pathlib import Path

CHOICE_ENV = "FLYWHEEL_BLAS"
NOTE_SHOWN_ENV = "FLYWHEEL_BLAS_NOTE_SHOWN"
OPT_OUT_VALUES = {"reference", "off", "0", "no", "none"}
AUTO_VALUES = {"", "auto", "openblas"}
NAMED_VALUES = {"system", "wheel", "mkl"}
INSTALL_HINT = "apt-get install libopenblas0-pthread"
WHEEL_PACKAGE = "ngsolve_openblas"  # pyproject.toml installs it on Linux x86_64 only
# One BLAS thread per process unless the user sets any of the family's thread variables: our MLX processes
# run side by side (trainer or evaluator next to `mlx_lm server`), and OpenBLAS threads that wait for a busy
# core spin; on a shared 2-core machine 1 thread trained the tiny model several times faster than 2
# (docs/BENCHMARKS.md, section blas_speed).
THREAD_DEFAULTS = {  # family: (variables that mean "the user chose", defaults set before the library loads)
    "openblas": (
        {"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"},
        {"OPENBLAS_NUM_THREADS": "1"},
    ),
    "mkl": (
        {"MKL_THREADING_LAYER", "MKL_NUM_THREADS", "OMP_NUM_THREADS"},
        {"MKL_THREADING_LAYER": "SEQUENTIAL"},
    ),
    "blis": ({"BLIS_NUM_THREADS", "OMP_NUM_THREADS"}, {"BLIS_NUM_THREADS": "1"}),
}

_state: dict = {"library": None, "via": None, "mlx_imported_first": False}


class BlasChoiceError(FileNotFoundError):
    """FLYWHEEL_BLAS names a library that is not on this machine."""


def is_linux() -> bool:
    return platform.system() == "Linux"


def choice() -> str:
    """The FLYWHEEL_BLAS value, normalised (names lower-case, paths as given)."""
    value = os.environ.get(CHOICE_ENV, "").strip()
    return value.lower() if value.lower() in OPT_OUT_VALUES | AUTO_VALUES | NAMED_VALUES else value


def opted_out() -> bool:
    return choice() in OPT_OUT_VALUES


def system_candidates() -> list[str]:
    """Where distributions put OpenBLAS, the pthread build first."""
    arch = f"{platform.machine()}-linux-gnu"
    return [
        f"/usr/lib/{arch}/openblas-pthread/libopenblas.so.0",
        f"/usr/lib/{arch}/libopenblas.so.0",
        f"/usr/lib/{arch}/openblas-openmp/libopenblas.so.0",
        f"/usr/lib/{arch}/openblas-serial/libopenblas.so.0",
        "/usr/lib64/libopenblasp.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/lib/libopenblas.so.0",
    ]


def system_openblas() -> str | None:
    """The system's OpenBLAS (a distribution package), or None."""
    found = next((path for path in system_candidates() if Path(path).is_file()), None)
    if found is None:
        found = ctypes.util.find_library("openblas")
    return found if found and Path(found).is_absolute() and Path(found).is_file() else None


def wheel_openblas() -> str | None:
    """The OpenBLAS of the `ngsolve-openblas` wheel in this environment, or None (found, never imported:
    importing it would load the library itself, without the Fortran runtime fallback)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next((str(path) for path in sorted(folder.glob("libopenblas*.so*"))), None)


def mkl_library() -> str | None:
    """`libmkl_rt` of the `mkl` wheel in this environment (it lands in `<prefix>/lib`), or None."""
    return next((str(p) for p in sorted(Path(sys.prefix, "lib").glob("libmkl_rt.so.*"))), None)


def finders() -> dict:
    """The named choices and how each finds its library (looked up when called, so tests can repoint one)."""
    return {"system": system_openblas, "wheel": wheel_openblas, "mkl": mkl_library}


MISSING = {
    "system": f"no system OpenBLAS found ({INSTALL_HINT})",
    "wheel": f"the {WHEEL_PACKAGE} package is not installed (`uv sync` installs it on Linux x86_64)",
    "mkl": f"no libmkl_rt.so.* in {Path(sys.prefix, 'lib')} (`uv pip install mkl`)",
}


def find_openblas() -> str | None:
    """Path of the fast BLAS library that FLYWHEEL_BLAS selects (see the module doc); None when there is none
    or the choice is the reference BLAS. Raises BlasChoiceError when an explicit choice is not there."""
    chosen = choice()
    if chosen in OPT_OUT_VALUES:
        return None
    if chosen in AUTO_VALUES:
        return system_openblas() or wheel_openblas()
    if chosen in NAMED_VALUES:
        found = finders()[chosen]()
        if found is None:
            raise BlasChoiceError(f"{CHOICE_ENV}={chosen}: {MISSING[chosen]}")
        return found
    if not Path(chosen).is_file():
        raise BlasChoiceError(f"{CHOICE_ENV}={chosen}: no such library file")
    return chosen


def family(path: str | None) -> str | None:
    """What kind of BLAS a library file is, from its name and folder (behind symlinks; Debian's OpenBLAS
    also ships as `openblas-pthread/libblas.so.3`): openblas, mkl, blis, or other."""
    if path is None:
        return None
    resolved = Path(os.path.realpath(path))
    name = f"{resolved.parent.name}/{resolved.name}".lower()
    return next((kind for kind in ("openblas", "mkl", "blis") if kind in name), "other")


def source(path: str | None) -> str | None:
    """Where a library comes from: system, wheel (ngsolve-openblas), mkl (the mkl wheel) or path."""
    if path is None:
        return None
    resolved = os.path.realpath(path)
    for name, finder in finders().items():
        found = finder()
        if found is not None and os.path.realpath(found) == resolved:
            return name
    return "path"


def loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split(None, 5)[5] for line in maps.splitlines() if line.count(" ") >= 5 and "/" in line}
    return sorted(p.strip() for p in paths if ".so" in p)


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def global_blas() -> str | None:
    """Path of the library whose `cblas_sgemm` is global in this process: what mlx binds to when it loads
    next (or bound to, if that library came first). None when there is none, i.e. mlx uses its own.

    numpy's OpenBLAS does not count: it is loaded locally and its symbols are prefixed (`scipy_cblas_sgemm`).
    """
    process = ctypes.CDLL(None)
    try:
        symbol = process.cblas_sgemm  # dlsym in the global scope
    except AttributeError:
        return None
    info = _DlInfo()
    if process.dladdr(ctypes.cast(symbol, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
        return os.path.realpath(info.dli_fname.decode())
    return "unknown"


def mlx_cpu_libs() -> Path | None:
    """The folder of shared libraries that the `mlx[cpu]` wheel brings (reference BLAS, libgfortran...)."""
    for entry in sys.path:
        folder = Path(entry or ".") / "mlx_cpu.libs"
        if folder.is_dir():
            return folder
    return None


@functools.cache
def system_fortran_runtime() -> bool:
    """True if the dynamic loader can find libgfortran.so.5 (Debian: libgfortran5), which OpenBLAS needs."""
    try:
        ctypes.CDLL("libgfortran.so.5")
    except OSError:
        return False
    return True


def _dynamic_section(data: bytes, elf_path: Path) -> tuple[list[tuple[int, int]], int]:
    """The (tag, value) entries of a 64-bit little-endian ELF file's dynamic section and the file offset of
    its string table (DT_STRTAB), which the name-valued entries (DT_NEEDED, DT_SONAME) index into."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{elf_path}: not a 64-bit little-endian ELF file")
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    dynamic = next((s for s in segments if s[0] == 2), None)  # PT_DYNAMIC
    if dynamic is None:
        raise ValueError(f"{elf_path}: no dynamic section")
    entries = []
    for offset in range(dynamic[2], dynamic[2] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:
            break
        entries.append((tag, value))
    strtab_vaddr = next((value for tag, value in entries if tag == 5), None)  # DT_STRTAB
    if strtab_vaddr is None:
        raise ValueError(f"{elf_path}: no string table")
    load = next((s for s in segments if s[0] == 1 and s[3] <= strtab_vaddr < s[3] + s[5]), None)  # PT_LOAD
    if load is None:
        raise ValueError(f"{elf_path}: string table outside every loaded segment")
    return entries, strtab_vaddr - load[3] + load[2]


def needed_libraries(elf_path: str | Path) -> list[str]:
    """The DT_NEEDED names of a shared library (what the loader must find before it loads)."""
    data = Path(elf_path).read_bytes()
    entries, strtab = _dynamic_section(data, Path(elf_path))
    names = [strtab + value for tag, value in entries if tag == 1]  # DT_NEEDED
    return [data[start : data.index(b"\0", start)].decode() for start in names]


def set_soname(elf_path: Path, new_soname: str) -> None:
    """Rewrite the DT_SONAME of a 64-bit little-endian ELF shared library in place (the new name must fit)."""
    data = bytearray(elf_path.read_bytes())
    entries, strtab = _dynamic_section(data, elf_path)
    soname = next((value for tag, value in entries if tag == 14), None)  # DT_SONAME
    if soname is None:
        raise ValueError(f"{elf_path}: no SONAME to rewrite")
    start = strtab + soname
    end = data.index(b"\0", start)
    if len(new_soname) > end - start:
        raise ValueError(f"{elf_path}: SONAME {new_soname!r} is longer than the old one")
    data[start : end + 1] = new_soname.encode().ljust(end + 1 - start, b"\0")
    elf_path.write_bytes(bytes(data))


def bundled_fortran_runtime() -> list[str] | None:
    """libquadmath + libgfortran from `mlx_cpu.libs`, the latter renamed back to `libgfortran.so.5`.

    The wheel's copies have hashed SONAMEs, which do not satisfy OpenBLAS's `NEEDED libgfortran.so.5`; a copy
    whose SONAME says `libgfortran.so.5`, loaded first, does. Returns the paths to load, in order.
    """
    libs = mlx_cpu_libs()
    if libs is None:
        return None
    quadmath = next(iter(sorted(libs.glob("libquadmath*.so*"))), None)
    gfortran = next(iter(sorted(libs.glob("libgfortran*.so*"))), None)
    if quadmath is None or gfortran is None:
        return None
    cache = Path(os.environ.get("FLYWHEEL_CACHE", "~/.cache/flywheel")).expanduser() / "blas"
    renamed = cache / f"{gfortran.name}.renamed" / "libgfortran.so.5"
    if not renamed.exists():
        renamed.parent.mkdir(parents=True, exist_ok=True)
        partial = renamed.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(gfortran, partial)
        set_soname(partial, "libgfortran.so.5")
        partial.replace(renamed)
    return [str(quadmath), str(renamed)]


def preload_chain(library: str) -> list[str] | None:
    """The libraries to load, in order, so that `library` loads: itself, after a Fortran runtime if it needs
    one that the system lacks (OpenBLAS builds do). None when that runtime cannot be had."""
    if system_fortran_runtime() or "libgfortran.so.5" not in needed_libraries(library):
        return [library]
    fortran = bundled_fortran_runtime()
    return None if fortran is None else [*fortran, library]


def missing_advice() -> str:
    """What to do when no fast BLAS is found, for this machine."""
    if platform.machine() in ("x86_64", "AMD64"):
        return (
            f"`uv sync` installs one on Linux x86_64 (the {WHEEL_PACKAGE.replace('_', '-')} wheel); "
            f"or install the system's: `{INSTALL_HINT}`"
        )
    return f"install OpenBLAS: `{INSTALL_HINT}` (no wheel with a fast BLAS for {platform.machine()} here)"


def _note_missing(reason: str) -> None:
    if os.environ.get(NOTE_SHOWN_ENV):
        return
    os.environ[NOTE_SHOWN_ENV] = "1"  # inherited: one note per process tree
    print(
        f"flywheel: {reason}; MLX uses the slow reference BLAS of its wheel (~30x slower matmuls). "
        f"{missing_advice()}, or set {CHOICE_ENV}=/path/to/libopenblas.so.0 "
        f"({CHOICE_ENV}=reference hides this note).",
        file=sys.stderr,
    )


def thread_defaults(library: str, env) -> dict[str, str]:
    """The thread settings to add to `env` for `library`: none if the user set any of its family's."""
    chosen, defaults = THREAD_DEFAULTS.get(family(library), (set(), {}))
    return {} if any(env.get(name) for name in chosen) else defaults


def _unusable(library: str | None) -> str:
    return "no OpenBLAS found" if library is None else f"{library} needs libgfortran.so.5, which is missing"


def ensure_fast_blas() -> str | None:
    """On Linux, load the chosen fast BLAS globally so mlx binds to it; returns its path, or None when mlx
    keeps its reference BLAS.

    Call it before anything imports mlx. Idempotent. A no-op on macOS and with `FLYWHEEL_BLAS=reference`.
    """
    if not is_linux() or opted_out():
        return None
    if _state["library"] is not None:
        return _state["library"]
    present = global_blas()
    mlx_first = "mlx.core" in sys.modules
    if present is not None:
        preloaded = {os.path.realpath(path) for path in preloads(os.environ)}
        via = "LD_PRELOAD" if present in preloaded else "already loaded"
        if mlx_first and via != "LD_PRELOAD":
            _state["mlx_imported_first"] = True
            warnings.warn(
                "core.blas: the fast BLAS was loaded after mlx; mlx may still use the reference BLAS",
                RuntimeWarning,
                stacklevel=2,
            )
        _state.update(library=present, via=via)
        return present
    if mlx_first:
        _state["mlx_imported_first"] = True
        warnings.warn(
            "core.blas.ensure_fast_blas() was called after mlx was imported: mlx keeps the slow reference "
            "BLAS. Call it before the first `import mlx` (importing `core` arranges it).",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    library = find_openblas()
    chain = None if library is None else preload_chain(library)
    if chain is None:
        _note_missing(_unusable(library))
        return None
    os.environ.update(thread_defaults(library, os.environ))
    try:
        for path in chain:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        _note_missing(f"{library} failed to load ({error})")
        return None
    _state.update(library=library, via="ctypes")
    return library


def preloads(env) -> list[str]:
    """The LD_PRELOAD entries of an environment (colons or spaces separate them)."""
    return [path for path in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if path]


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child MLX process (e.g. `mlx_lm server`): on Linux, the fast BLAS in LD_PRELOAD, the one
    this process uses if it has bound one, else the one FLYWHEEL_BLAS selects."""
    env = dict(env)
    if not is_linux() or env.get(CHOICE_ENV, "").strip().lower() in OPT_OUT_VALUES:
        return env
    library = _state["library"] if _state["library"] not in (None, "unknown") else find_openblas()
    chain = None if library is None else preload_chain(library)
    if chain is None:
        _note_missing(_unusable(library))
        env.setdefault(NOTE_SHOWN_ENV, os.environ.get(NOTE_SHOWN_ENV, "1"))
        return env
    env.update(thread_defaults(library, env))
    preload = preloads(env)
    if os.path.realpath(library) not in {os.path.realpath(path) for path in preload}:
        env["LD_PRELOAD"] = ":".join([*chain, *preload])
    return env


def openblas_info(path: str) -> dict:
    """OpenBLAS's own build string and thread count (the library is loaded if it is not yet)."""
    try:
        library = ctypes.CDLL(path)
        library.openblas_get_config.restype = ctypes.c_char_p
        return {
            "config": library.openblas_get_config().decode().strip(),
            "threads": library.openblas_get_num_threads(),
        }
    except (OSError, AttributeError):
        return {}


def blas_status(measure: bool = False) -> dict:
    """What BLAS mlx uses in this process, for manifests and benchmarks; `measure` adds an f32 matmul GFLOP/s."""
    system = platform.system()
    status: dict = {"platform": f"{system} {platform.machine()}", "opted_out": opted_out()}
    if system == "Darwin":
        status.update(blas="accelerate", library=None, loaded_via=None)
    elif system != "Linux":
        status.update(blas="unknown", library=None, loaded_via=None)
    else:
        present = global_blas()
        in_use = present is not None and not _state["mlx_imported_first"]
        fortran = next((p for p in loaded_libraries() if "libgfortran" in Path(p).name), None)
        status.update(
            blas=family(present) if in_use else "reference",
            library=present if in_use else None,
            source=source(present) if in_use else None,
            loaded_via=(_state["via"] or "LD_PRELOAD/already loaded") if in_use else None,
            fortran_runtime=fortran if in_use else None,
            mlx_imported_first=_state["mlx_imported_first"],
            choice=choice() or "auto",
        )
        if in_use and family(present) == "openblas":
            status["openblas"] = openblas_info(present)
    if measure:
        status["matmul_gflops_f32_512"] = round(matmul_gflops(512), 1)
    return status


def matmul_gflops(n: int = 512, seconds: float = 0.3) -> float:
    """f32 n x n matmul throughput of mlx on the CPU, in GFLOP/s (imports mlx)."""
    import mlx.core as mx

    a = mx.random.normal((n, n), stream=mx.cpu)
    b = mx.random.normal((n, n), stream=mx.cpu)
    mx.eval(mx.matmul(a, b, stream=mx.cpu))
    count, start = 0, time.perf_counter()
    while True:
        mx.eval(mx.matmul(a, b, stream=mx.cpu))
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 2:
            return 2 * n**3 * count / elapsed / 1e9


if __name__ == "__main__":
    import json

    ensure_fast_blas()
    print(json.dumps(blas_status(measure=True), indent=2))
