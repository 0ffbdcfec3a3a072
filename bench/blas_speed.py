"""How fast MLX runs on this Linux CPU with each BLAS it can bind: the wheel's reference BLAS, the system's
OpenBLAS, the OpenBLAS that `uv sync` installs (the `ngsolve-openblas` wheel), or any library file.

Each variant (a `FLYWHEEL_BLAS` value, core/blas.py) runs in its own subprocesses, because the BLAS is bound
before mlx is imported and its thread count is read when it loads: f32 matmul GFLOP/s at a few sizes with the
library's default threads, the 1024² matmul at 1 and 2 threads (OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
OMP_NUM_THREADS, BLIS_NUM_THREADS all set), and tokens/s of full fine-tuning of the tiny model.
`--demo` also times the demo (`python -m flywheel --root TMP`): `--quick` for every variant, the full demo for
every fast one (the full one with the reference BLAS takes ~30 min here; `--full-demo` names the variants).
`--install` times `uv sync --locked --no-install-project` from an empty uv cache, for this lock and for the
same lock without the BLAS wheel (what the wheel adds to `uv sync`). Figures go to docs/BENCHMARKS.md (section
`blas_speed`) and, as JSON, stdout.

    uv run python bench/blas_speed.py --demo --install
    uv run python bench/blas_speed.py --variant reference --variant wheel \
        --variant "/path/to/libmkl_rt.so.3 MKL_THREADING_LAYER=SEQUENTIAL"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = (128, 256, 512, 1024)
THREADS = (1, 2)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS")
DEMO_TOTAL = re.compile(r"total (\d+)s: collect (\d+)s, curate (\d+)s, train (\d+)s, evaluate (\d+)s")


def worker(out: Path, sizes: list[int], tiny_steps: int, lora_model: str | None, lora_steps: int) -> None:
    from core.blas import blas_status, matmul_gflops  # importing core binds the BLAS before mlx loads

    result = {"blas": blas_status(), "load_average": os.getloadavg()[0]}
    # best of three short windows: other processes on the machine only ever slow a window down
    result["matmul_gflops"] = {
        n: round(max(matmul_gflops(n, seconds=0.2) for _ in range(3)), 2) for n in sizes
    }
    if tiny_steps:
        result["tiny_train"] = train_speed(None, tiny_steps, lora=False)
    if lora_model:
        result["lora"] = {"model": Path(lora_model).name, **train_speed(lora_model, lora_steps, lora=True)}
    out.write_text(json.dumps(result))


def train_speed(model_dir: str | None, steps: int, lora: bool) -> dict:
    """Tokens/s and s/step of mlx-lm's `train` over `steps` measured steps (after `steps` warm-up steps)."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from models.tiny import build_tiny_model, tool_call_samples

    with tempfile.TemporaryDirectory() as scratch:
        if model_dir is None:
            model_dir = str(build_tiny_model(Path(scratch) / "tiny", seed=0))
        model, tokenizer = load(model_dir)
        mx.random.seed(0)
        if lora:
            model.freeze()
            linear_to_lora_layers(model, 4, {"rank": 8, "scale": 20.0, "dropout": 0.0})
        batch_size = 1 if lora else 4
        samples = tool_call_samples(64, seed=0)
        if lora:  # plain chat turns: any model's template renders them (SmolLM2's has no tool support)
            samples = [
                {"messages": [s["messages"][1], s["messages"][-1]]}
                for s in tool_call_samples(256, seed=0)
                if s["messages"][-1].get("content")
            ][:64]
        data = CacheDataset(ChatDataset(samples, tokenizer, mask_prompt=False))

        class Reports(TrainingCallback):
            def __init__(self):
                self.reports = []

            def on_train_loss_report(self, info):
                self.reports.append(info)

        reports = Reports()
        args = TrainingArgs(
            batch_size=batch_size,
            iters=2 * steps,
            steps_per_report=steps,
            steps_per_save=10**9,
            max_seq_length=2048,
            adapter_file=str(Path(scratch) / "adapters.safetensors"),
        )
        start = time.perf_counter()
        train(model, optim.Adam(learning_rate=1e-5), data, args=args, training_callback=reports)
        measured = reports.reports[-1]  # the first window includes compilation
        return {
            "steps": steps,
            "batch_size": batch_size,
            "tokens_per_second": round(measured["tokens_per_second"], 1),
            "seconds_per_step": round(1 / measured["iterations_per_second"], 3),
            "wall_seconds": round(time.perf_counter() - start, 1),
        }


def variant_env(variant: str, threads: int | None = None) -> dict[str, str]:
    """The environment of a measured process. `variant` is a FLYWHEEL_BLAS value, optionally followed by
    VAR=VALUE words for that variant only; the user's LD_PRELOAD and BLAS thread settings are removed (the
    library's defaults), or every BLAS threading variable is set to `threads`."""
    value, *pairs = variant.split()
    drop = {"LD_PRELOAD", "FLYWHEEL_BLAS", "FLYWHEEL_BLAS_NOTE_SHOWN", *THREAD_VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(dict(pair.split("=", 1) for pair in pairs), FLYWHEEL_BLAS=value, COLUMNS="200")
    if threads is not None:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return env


def run_worker(env: dict[str, str], args: argparse.Namespace, sizes, train: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--worker-out", out.name, "--sizes", ",".join(map(str, sizes))]
        command += [
            "--tiny-steps",
            str(args.tiny_steps if train else 0),
            "--lora-steps",
            str(args.lora_steps),
        ]
        if args.lora_model and train:
            command += ["--lora-model", args.lora_model]
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench worker {env['FLYWHEEL_BLAS']} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def measure_variant(variant: str, args: argparse.Namespace) -> dict:
    result = run_worker(variant_env(variant), args, SIZES, train=True)
    result["threads"] = {
        str(t): run_worker(variant_env(variant, t), args, (1024,), train=False)["matmul_gflops"]["1024"]
        for t in THREADS
    }
    return result


def run_demo(variant: str, quick: bool) -> dict:
    """Wall time of `python -m flywheel --root TMP [--quick]` with this BLAS, and its own stage times."""
    with tempfile.TemporaryDirectory(prefix="flywheel-blas-demo-") as root:
        command = [sys.executable, "-m", "flywheel", "--root", root, *(["--quick"] if quick else [])]
        start = time.perf_counter()
        done = subprocess.run(command, env=variant_env(variant), cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"demo with {variant} failed:\n{done.stderr[-3000:]}")
    stages = DEMO_TOTAL.search(" ".join(done.stdout.split()))
    names = ("total", "collect", "curate", "train", "evaluate")
    return {
        "wall_s": round(wall, 1),
        **(dict(zip(names, map(int, stages.groups()), strict=True)) if stages else {}),
    }


def install_cost(label: str, pyproject: str, lock: str) -> dict:
    """`uv sync --locked --no-install-project` of this pyproject/lock from an empty uv cache: wall time, size
    of the environment and of the cache, and bytes received by the machine meanwhile (all interfaces but lo:
    an upper bound when other work downloads too)."""
    with tempfile.TemporaryDirectory(prefix=f"flywheel-sync-{label}-") as scratch:
        project = Path(scratch, "project")
        project.mkdir()
        (project / "pyproject.toml").write_text(pyproject)
        (project / "uv.lock").write_text(lock)
        (project / "README.md").write_text("")
        env = dict(
            os.environ,
            UV_CACHE_DIR=str(Path(scratch, "cache")),
            UV_PROJECT_ENVIRONMENT=str(Path(scratch, "venv")),
        )
        env.pop("VIRTUAL_ENV", None)
        received, start = received_bytes(), time.perf_counter()
        subprocess.run(
            ["uv", "sync", "--locked", "--no-install-project", "-q"], cwd=project, env=env, check=True
        )
        wall, received = time.perf_counter() - start, received_bytes() - received
        return {
            "wall_s": round(wall, 1),
            "received_mb": round(received / 1e6, 1),
            "venv_mb": round(folder_bytes(Path(scratch, "venv")) / 1e6, 1),
            "cache_mb": round(folder_bytes(Path(scratch, "cache")) / 1e6, 1),
        }


def received_bytes() -> int:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sum(int(line.split(":")[1].split()[0]) for line in lines if line.split(":")[0].strip() != "lo")


def folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def label(variant: str) -> str:
    value, *pairs = variant.split()
    name = {"system": "system OpenBLAS", "wheel": "wheel OpenBLAS"}.get(value, Path(value).name)
    settings = " ".join(pair for pair in pairs if not pair.startswith("LD_LIBRARY_PATH="))
    return f"{name} {settings}".strip()


def report(results: dict[str, dict], demos: dict, installs: dict, command: str) -> str:
    variants = list(results)
    lines = [f"Command: `{command}`. Variants (`FLYWHEEL_BLAS`):"]
    for variant, result in results.items():
        status = result["blas"]
        config = status.get("openblas", {}).get("config", "")
        lines.append(
            f"- `{variant}`: {status['blas']} `{status.get('library') or 'mlx_cpu.libs/libblas'}` {config}"
        )
    ref = results.get("reference")
    lines += [
        "",
        "| measure | " + " | ".join(label(v) for v in variants) + " |",
        "| --- |" + " ---: |" * len(variants),
    ]

    def row(title: str, values: list[float], higher_is_better: bool = True) -> str:
        cells = []
        for variant, value in zip(variants, values, strict=True):
            cell = f"{value:.1f}"
            if ref is not None and variant != "reference":
                base = values[variants.index("reference")]
                cell += f" ({value / base if higher_is_better else base / value:.1f}×)"
            cells.append(cell)
        return f"| {title} | " + " | ".join(cells) + " |"

    for n in SIZES:
        lines.append(
            row(
                f"f32 matmul {n}², GFLOP/s, default threads",
                [r["matmul_gflops"][str(n)] for r in results.values()],
            )
        )
    for t in THREADS:
        lines.append(
            row(f"f32 matmul 1024², GFLOP/s, {t} thread(s)", [r["threads"][str(t)] for r in results.values()])
        )
    lines.append(
        row(
            "tiny model full fine-tune, tokens/s (batch 4)",
            [r["tiny_train"]["tokens_per_second"] for r in results.values()],
        )
    )
    if all("lora" in r for r in results.values()):
        name = next(iter(results.values()))["lora"]["model"]
        lines.append(
            row(f"{name} LoRA, s/step", [r["lora"]["seconds_per_step"] for r in results.values()], False)
        )
    loads = ", ".join(f"{label(v)} {r['load_average']:.1f}" for v, r in results.items())
    lines += [
        "",
        "(×: speed-up over the reference BLAS.) Each figure is the best of three 0.2 s windows in a fresh "
        f"process; training excludes the first (compiling) window. Load average (1 min) before each: {loads}.",
    ]
    if demos:
        lines += demo_table(demos)
    if installs:
        lines += [
            "",
            "`uv sync --locked --no-install-project` from an empty uv cache (dependencies only), into a new "
            "environment; bytes received by the machine meanwhile:",
            "",
            "| lock | wall s | received MB | environment MB | uv cache MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, cost in installs.items():
            lines.append(
                f"| {name} | {cost['wall_s']:.1f} | {cost['received_mb']:.1f} | {cost['venv_mb']:.1f} "
                f"| {cost['cache_mb']:.1f} |"
            )
    return "\n".join(lines)


def demo_table(demos: dict) -> list[str]:
    lines = [
        "",
        "Demo (`python -m flywheel --root TMP`, the README's command) per BLAS; seconds of wall time, and the "
        "demo's own stage times (collect / curate / train / evaluate):",
        "",
        "| BLAS | demo | wall s | stages s | vs system OpenBLAS |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for (variant, kind), result in demos.items():
        base = demos.get(("system", kind))
        ratio = f"{result['wall_s'] / base['wall_s']:.2f}×" if base else "—"
        stages = "/".join(str(result.get(k, "?")) for k in ("collect", "curate", "train", "evaluate"))
        lines.append(f"| {label(variant)} | {kind} | {result['wall_s']:.0f} | {stages} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Matmul GFLOP/s, training tokens/s and demo time of MLX with each BLAS it can bind.",
        epilog="example: uv run python bench/blas_speed.py --demo --install",
    )
    parser.add_argument(
        "--variant",
        action="append",
        help="a FLYWHEEL_BLAS value, optionally followed by VAR=VALUE words for it alone (repeatable; "
        "default: reference, system and wheel, those present)",
    )
    parser.add_argument(
        "--tiny-steps", type=int, default=20, help="measured tiny-model steps (after as many warm-up)"
    )
    parser.add_argument("--lora-model", help="also time LoRA steps of this mlx-lm model directory")
    parser.add_argument(
        "--lora-steps", type=int, default=2, help="measured LoRA steps (after as many warm-up)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="also time the demo per BLAS (quick; full when fast)"
    )
    parser.add_argument(
        "--full-demo",
        action="append",
        help="with --demo: the variants that also run the full demo (default: every one but the reference)",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="also time `uv sync` from an empty cache, with and without the wheel",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print JSON only, leave docs/BENCHMARKS.md alone"
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        sizes = [int(n) for n in args.sizes.split(",")]
        return worker(args.worker_out, sizes, args.tiny_steps, args.lora_model, args.lora_steps)

    from rich.console import Console

    from core import blas

    console = Console(stderr=True)
    present = {"reference": True, "system": blas.system_openblas(), "wheel": blas.wheel_openblas()}
    variants = args.variant or [v for v, found in present.items() if found]
    results, demos, installs = {}, {}, {}
    for variant in variants:
        with console.status(f"measuring matmul and training with {variant}..."):
            start = time.perf_counter()
            results[variant] = measure_variant(variant, args)
        console.print(f"{variant}: measured in {time.perf_counter() - start:.0f} s")
    if args.demo:
        runs = [(v, "quick") for v in variants]
        full = args.full_demo or [v for v in variants if v != "reference"]
        runs += [(v, "full") for v in full]
        for variant, kind in runs:
            with console.status(f"demo ({kind}) with {variant}..."):
                demos[(variant, kind)] = run_demo(variant, quick=kind == "quick")
            console.print(f"demo ({kind}) with {variant}: {demos[(variant, kind)]['wall_s']:.0f} s")
    if args.install:
        pyproject, lock = (ROOT / "pyproject.toml").read_text(), (ROOT / "uv.lock").read_text()
        for name, files in (
            ("without the wheel", without_wheel(pyproject, lock)),
            ("this lock", (pyproject, lock)),
        ):
            with console.status(f"uv sync from an empty cache: {name}..."):
                installs[name] = install_cost(name.split()[0], *files)
            console.print(f"uv sync ({name}): {installs[name]}")
    command = "uv run python bench/blas_speed.py " + " ".join(sys.argv[1:])
    body = report(results, demos, installs, command.strip())
    print(
        json.dumps(
            {"matmul": results, "demo": {f"{v} {k}": r for (v, k), r in demos.items()}, "install": installs},
            indent=2,
        )
    )
    console.print(body, markup=False)
    if not args.no_write:
        from bench._report import write_section

        write_section(
            "blas_speed",
            "MLX on a Linux CPU with each BLAS: reference, system OpenBLAS, wheel OpenBLAS",
            body,
        )


def without_wheel(pyproject: str, lock: str) -> tuple[str, str]:
    """pyproject.toml and uv.lock with the BLAS wheel taken out (`uv sync --locked` checks they still agree)."""
    name = "ngsolve-openblas"
    pyproject = "".join(line for line in pyproject.splitlines(True) if f'"{name}' not in line)
    blocks = lock.split("\n[[package]]\n")
    blocks = [block for block in blocks if not block.startswith(f'name = "{name}"\n')]
    lock = "\n[[package]]\n".join(blocks)
    return pyproject, "".join(line for line in lock.splitlines(True) if f'{{ name = "{name}"' not in line)


if __name__ == "__main__":
    main()
