"""bench/real_model.py's evaluation: one side (base, or base + adapter) scored behind its own `mlx_lm server`
at turn and agent level, and the two sides paired in a report in evaluate's format."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bench.real_model_report import codes, fmt_rate


def evaluate_side(
    label: str, model: Path, adapter: Path | None, turn_sets: dict, tasks, args, stages, workdir
):
    """Turn level (each turn set), then agent level, against one `mlx_lm server` (base, or base + adapter)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agent.episodes import run_episodes
    from core.process import MlxServer
    from core.turns import evaluate_turns_server

    stages.begin(f"serve {label}")
    server = MlxServer(
        model,
        adapter_path=adapter,
        max_tokens=args.max_tokens,
        startup_timeout=600,
        log_path=workdir / f"server-{label}.log",
    )
    with server:
        # one request alone first: the server caches the shared system prompt + tool listing it prefilled
        evaluate_turns_server(server.base_url, next(iter(turn_sets.values()))[:1], max_tokens=1)
        stages.end()

        turns = {}
        for set_name, samples in turn_sets.items():
            stages.begin(f"turns {label} ({set_name})")
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=stages.console) as bar:
                bar_id = bar.add_task(f"turns · {label} · {set_name}", total=len(samples))
                results = evaluate_turns_server(
                    server.base_url,
                    samples,
                    max_tokens=args.max_tokens,
                    concurrency=args.concurrency,
                    progress=lambda done, total, b=bar, i=bar_id: b.update(i, completed=done),
                )
            rates = results.rates
            stages.console.print(
                f"  exact calls {fmt_rate(rates['exact_call_accuracy'])} · parsed calls "
                f"{fmt_rate(rates['parsed_call_rate'])} · {codes({k: v for k, v in results.codes.items() if v})}"
            )
            turns[set_name] = results.to_dict()
            stages.end()

        stages.begin(f"agent {label}")
        episodes = run_episodes(
            tasks,
            server.base_url,
            "default_model",
            concurrency=args.concurrency,
            description=f"agent · {label}",
            max_steps=args.agent_max_steps,
            timeout=args.agent_timeout,
        )
        stages.end()
    return turns, [e.to_dict() for e in episodes]


def evaluate_report(name: str, model: Path, adapter: Path, args, base_turns, adapter_turns, episodes) -> dict:
    """A report in evaluate's format, so evaluate.report renders it (HTML, console table)."""
    from agent.episodes import summarize
    from evaluate import stats

    turns = {"baseline": base_turns, "candidate": adapter_turns}
    turns["comparison"] = stats.compare_turns(base_turns, adapter_turns, seed=args.seed)
    agent = None
    if episodes is not None:
        base, adapted = episodes
        agent = {
            "suite": args.suite,
            "n_tasks": len(adapted),
            "baseline": {"episodes": base, "summary": summarize(base), "proxy": None},
            "candidate": {"episodes": adapted, "summary": summarize(adapted), "proxy": None},
        }
        agent["comparison"] = stats.compare_agent(base, adapted, seed=args.seed)
    return {
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": str(model),
        "adapter": str(adapter),
        "baseline_model": str(model),
        "server": None,
        "data": None,
        "tasks": args.suite if agent else None,
        "labels": {"candidate": "adapter", "baseline": "base"},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "turns": turns,
        "agent": agent,
        "regressions": stats.regressions(turns, agent),
        "gate": None,
    }
