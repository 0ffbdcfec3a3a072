"""Make MLX on a Linux CPU use OpenBLAS instead of the reference BLAS its wheel ships.

The `mlx[cpu]` wheel links `mlx_cpu.libs/libblas-*.so.3`, netlib's reference BLAS (3-6 GFLOP/s on f32
matmuls here); Debian's OpenBLAS does 150-200. Loading OpenBLAS with RTLD_GLOBAL before `mlx.core` is
imported puts its `cblas_sgemm` (and its LAPACK) first in the process's global symbol scope, so libmlx binds
to it when Python loads it. Python loads extensions with RTLD_NOW, so once mlx is imported it is too late.
Processes that are not ours (`python -m mlx_lm server`) get the same library through LD_PRELOAD.

    from core.blas import ensure_fast_blas
    ensure_fast_blas()          # first, before anything imports mlx
    import mlx.core as mx

macOS is never touched: MLX uses Metal and Accelerate there.
`FLYWHEEL_BLAS=reference` opts out; `FLYWHEEL_BLAS=/path/to/libopenblas.so.0` picks the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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
INSTALL_HINT = "apt-get install libopenblas0-pthread"

_state: dict = {"library": None, "via": None, "mlx_imported_first": False}


def is_linux() -> bool:
    return platform.system() == "Linux"


def opted_out() -> bool:
    return os.environ.get(CHOICE_ENV, "").strip().lower() in OPT_OUT_VALUES


def find_openblas() -> str | None:
    """Path of an OpenBLAS shared library on this machine, the pthread build first; None if there is none."""
    chosen = os.environ.get(CHOICE_ENV, "").strip()
    if chosen and chosen.lower() not in OPT_OUT_VALUES | {"openblas", "auto"}:
        if not Path(chosen).is_file():
            raise FileNotFoundError(f"{CHOICE_ENV}={chosen}: no such library file")
        return chosen
    arch = f"{platform.machine()}-linux-gnu"
    candidates = [
        f"/usr/lib/{arch}/openblas-pthread/libopenblas.so.0",
        f"/usr/lib/{arch}/libopenblas.so.0",
        f"/usr/lib/{arch}/openblas-openmp/libopenblas.so.0",
        f"/usr/lib/{arch}/openblas-serial/libopenblas.so.0",
        "/usr/lib64/libopenblasp.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/lib/libopenblas.so.0",
    ]
    for path in candidates:
        if Path(path).is_file():
            return path
    found = ctypes.util.find_library("openblas")
    return found if found and Path(found).is_absolute() else None


def loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split(None, 5)[5] for line in maps.splitlines() if line.count(" ") >= 5 and "/" in line}
    return sorted(p.strip() for p in paths if ".so" in p)


def openblas_in_process() -> str | None:
    """Path of an OpenBLAS whose symbols are global in this process (what mlx binds to when loaded next).

    numpy's own `libscipy_openblas64_` does not count: it is loaded locally and its symbols are prefixed.
    """
    try:
        ctypes.CDLL(None).openblas_get_config  # noqa: B018 - dlsym in the global scope
    except AttributeError:
        return None
    names = [p for p in loaded_libraries() if "openblas" in Path(p).name and "scipy" not in Path(p).name]
    return names[0] if names else "openblas"


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


def set_soname(elf_path: Path, new_soname: str) -> None:
    """Rewrite the DT_SONAME of a 64-bit little-endian ELF shared library in place (the new name must fit)."""
    data = bytearray(elf_path.read_bytes())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{elf_path}: not a 64-bit little-endian ELF file")
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    dynamic = next((s for s in segments if s[0] == 2), None)  # PT_DYNAMIC
    if dynamic is None:
        raise ValueError(f"{elf_path}: no dynamic section")
    tags = {}
    for offset in range(dynamic[2], dynamic[2] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:
            break
        tags.setdefault(tag, value)
    if 5 not in tags or 14 not in tags:  # DT_STRTAB, DT_SONAME
        raise ValueError(f"{elf_path}: no SONAME to rewrite")
    strtab_vaddr = tags[5]
    load = next((s for s in segments if s[0] == 1 and s[3] <= strtab_vaddr < s[3] + s[5]), None)  # PT_LOAD
    if load is None:
        raise ValueError(f"{elf_path}: string table outside every loaded segment")
    start = strtab_vaddr - load[3] + load[2] + tags[14]
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


def preload_chain(openblas: str) -> list[str] | None:
    """The libraries to load, in order, so that `openblas` loads: itself, after a Fortran runtime if needed."""
    if system_fortran_runtime():
        return [openblas]
    fortran = bundled_fortran_runtime()
    return None if fortran is None else [*fortran, openblas]


def _note_missing(reason: str) -> None:
    if os.environ.get(NOTE_SHOWN_ENV):
        return
    os.environ[NOTE_SHOWN_ENV] = "1"  # inherited: one note per process tree
    print(
        f"flywheel: {reason}; MLX uses the slow reference BLAS of its wheel (~30x slower matmuls). "
        f"Install OpenBLAS: `{INSTALL_HINT}`, or set {CHOICE_ENV}=/path/to/libopenblas.so.0 "
        f"({CHOICE_ENV}=reference hides this note).",
        file=sys.stderr,
    )


def ensure_fast_blas() -> str | None:
    """On Linux, load OpenBLAS globally so mlx binds to it; returns its path, or None when it is not in use.

    Call it before anything imports mlx. Idempotent. A no-op on macOS and with `FLYWHEEL_BLAS=reference`.
    """
    if not is_linux() or opted_out():
        return None
    if _state["library"] is not None:
        return _state["library"]
    present = openblas_in_process()
    mlx_first = "mlx.core" in sys.modules
    if present is not None:
        via = "LD_PRELOAD" if "openblas" in os.environ.get("LD_PRELOAD", "") else "already loaded"
        if mlx_first and via != "LD_PRELOAD":
            _state["mlx_imported_first"] = True
            warnings.warn(
                "core.blas: OpenBLAS was loaded after mlx; mlx may still use the reference BLAS",
                RuntimeWarning,
                stacklevel=2,
            )
        _state.update(library=present, via=via)
        return present
    if mlx_first:
        _state["mlx_imported_first"] = True
        warnings.warn(
            "core.blas.ensure_fast_blas() was called after mlx was imported: mlx keeps the slow reference "
            "BLAS. Call it before the first `import mlx` (entry points and conftest do).",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    openblas = find_openblas()
    if openblas is None:
        _note_missing("OpenBLAS not found")
        return None
    chain = preload_chain(openblas)
    if chain is None:
        _note_missing(f"{openblas} needs libgfortran.so.5, which is missing (apt-get install libgfortran5)")
        return None
    try:
        for library in chain:
            ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        _note_missing(f"OpenBLAS failed to load ({error})")
        return None
    _state.update(library=openblas, via="ctypes")
    return openblas


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child MLX process (e.g. `mlx_lm server`): OpenBLAS in LD_PRELOAD on Linux when present."""
    env = dict(env)
    if not is_linux() or env.get(CHOICE_ENV, "").strip().lower() in OPT_OUT_VALUES:
        return env
    openblas = find_openblas()
    chain = None if openblas is None else preload_chain(openblas)
    if chain is None:
        _note_missing("OpenBLAS not found" if openblas is None else f"{openblas} needs libgfortran.so.5")
        env.setdefault(NOTE_SHOWN_ENV, os.environ.get(NOTE_SHOWN_ENV, "1"))
        return env
    preload = env.get("LD_PRELOAD", "").replace(" ", ":").split(":")
    preload = [p for p in preload if p]
    if openblas not in preload:
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
        present = openblas_in_process()
        in_use = present is not None and not _state["mlx_imported_first"]
        preloaded = "openblas" in os.environ.get("LD_PRELOAD", "")
        fortran = next((p for p in loaded_libraries() if "libgfortran" in Path(p).name), None)
        status.update(
            blas="openblas" if in_use else "reference",
            library=present if in_use else None,
            loaded_via=(_state["via"] or ("LD_PRELOAD" if preloaded else "already loaded"))
            if in_use
            else None,
            fortran_runtime=fortran if in_use else None,
            mlx_imported_first=_state["mlx_imported_first"],
        )
        if in_use:
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
