"""The `real_model` section of docs/BENCHMARKS.md, from bench/real_model.py's summary: the run's settings,
each turn set's and the agent's results (base vs adapter, McNemar), stage times, and issue #7's targets."""

from __future__ import annotations

# issue #7's targets: bench/real_model.py checks them, the report states them
EXACT_TARGET = 0.80
TIME_TARGET_S = 30 * 60
ALPHA = 0.05


def fmt_rate(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def fmt_p(value) -> str:
    return "–" if value is None else f"{value:.2g}"


TURN_SETS = {
    "test split": "curate's test split of the train-task traces (sessions never trained on)",
    "held-out tasks": "the teacher's turns on the held-out tasks (new names; report_value never trained on)",
}
TURN_ROWS = (
    ("parsed_call_rate", "parsed tool call"),
    ("name_accuracy", "right tool name"),
    ("exact_call_accuracy", "exact call (name + arguments)"),
    ("abstention_accuracy", "final answer without a call"),
)


def markdown(summary: dict) -> str:
    s, turns, agent = summary["settings"], summary["turns"], summary["agent"]
    tokens, train, data = summary["tokens"], summary["train"], summary["data"]
    lines = [
        "Qwen2.5-Coder-0.5B-Instruct (f32, converted offline from the GGUF on PyPI) learns the reference agent's",
        "tool calls from the scripted demonstrator's traces: collect → curate → LoRA → base vs adapter on held-out",
        f"work. Command: `{summary['command']}`",
        "",
        "| setting | value |",
        "|---|---|",
        f"| suite | `{s['suite']}`: {data['train_tasks']} train tasks ({data['collection']['train']['recorded']} "
        f"recorded requests), {data['held_out_tasks']} held-out tasks |",
        f"| training data | {counts(data['splits'])} samples; {tokens['tokens_mean']:.0f} tokens/sample "
        f"(max {tokens['tokens_max']}) of which {tokens['supervised_mean']:.0f} supervised; the first "
        f"{tokens['shared_prompt_prefix']} (system prompt + tool listing) are the same in every prompt |",
        f"| LoRA | rank {s['lora_rank']}, last {s['num_layers']} blocks"
        f"{' + lm_head' if not s['no_lora_lm_head'] else ''}; {s['iters']} iterations × batch {s['batch_size']} "
        f"({s['iters'] * s['batch_size']} samples seen), lr {s['lr']:g} cosine → {s['lr'] / 10:g}, "
        f"max_seq_length {s['max_seq_length']}, seed {s['seed']} |",
    ]
    for name, result in turns.items():
        lines.append(
            f"| turns: {name} | {result['n']} cases ({result['n_call_cases']} with a reference call), spread over "
            f"{result['available']}: {TURN_SETS[name]} |"
        )
    lines += [
        f"| agent | {agent['n']} held-out tasks, round-robin over templates ({', '.join(agent['templates'])}); "
        f"≤ {s['agent_max_steps']} model requests each; the end state is checked |",
        f"| generation | greedy, max_tokens {s['max_tokens']}, {s['concurrency']} concurrent requests to "
        "`mlx_lm server` (one per side) |",
        "",
        "| result | base | adapter | McNemar p |",
        "|---|---:|---:|---:|",
    ]
    for name, result in turns.items():
        for key, label in TURN_ROWS:
            paired = result["paired"].get(key) or {}
            lines.append(
                f"| turns ({name}): {label} | {fmt_rate(result['base'][key])} | "
                f"{fmt_rate(result['adapter'][key])} | {fmt_p(paired.get('mcnemar_p'))} |"
            )
    a = agent["paired"]
    lines += [
        f"| **agent: held-out tasks solved** | {agent['base_successes']}/{agent['n']} | "
        f"{agent['adapter_successes']}/{agent['n']} | {fmt_p(a['mcnemar_p'])} "
        f"({a['adapter_only']} adapter-only, {a['base_only']} base-only) |",
        "",
    ]
    for name, result in turns.items():
        lines.append(
            f"Turn verdicts ({name}): base {codes(result['base_codes'])}; adapter {codes(result['adapter_codes'])}."
        )
    lines += ["", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {sec:.0f} |" for name, sec in summary["stage_seconds"].items()]
    t = summary["targets"]
    lines += [
        f"| **total** | **{summary['total_seconds']:.0f}** ({summary['total_seconds'] / 60:.1f} min) |",
        "",
        f"Training: {train['s_per_iter']:.1f} s per iteration overall (model load, preflight and "
        f"{train['val_seconds']:.0f} s of validation included; median step {train['median_step_s']} s); train loss "
        f"{fmt_loss(train['first_train_loss'])} → {fmt_loss(train['final_train_loss'])} (first and last report "
        f"window), validation loss {fmt_loss(train['first_val_loss'])} → {fmt_loss(train['final_val_loss'])}; "
        f"{train.get('loss') or 'loss: –'} (`train/loss.py`).",
        "",
        f"Targets (issue #7): exact calls ≥ {EXACT_TARGET:.0%} on the test split **{yes(t['exact_calls_test_split'])}**"
        f", on the held-out tasks' turns **{yes(t['exact_calls_held_out_tasks'])}**; significant agent-level gain "
        f"(McNemar p < {ALPHA}) **{yes(t['agent_gain'])}**; ≤ 30 min **{yes(t['time'])}**.",
        "",
        f"Machine load: load average (1/5/15 min) {summary['load']['start']} at the start, "
        f"{summary['load']['end']} at the end, 1-min maximum {summary['load']['max_1min']} at stage ends, on "
        f"{summary['load']['cores']} cores (the run alone keeps one to two cores busy; a higher load means other "
        "processes competed and the times are inflated).",
    ]
    if summary["reused"]:
        lines += ["", f"Reused from an earlier run (times not comparable): {', '.join(summary['reused'])}."]
    return "\n".join(lines)


def fmt_loss(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def codes(counts: dict) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.items())


def counts(splits: dict) -> str:
    return " / ".join(f"{n} {name}" for name, n in splits.items() if n)


def yes(flag: bool) -> str:
    return "met" if flag else "not met"
