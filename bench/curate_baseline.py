"""The pure-Python baseline bench/curate_throughput.py measures `curate.run` against: the same stages (validate,
keep complete exchanges, drop the ones a longer exchange contains, strip markers, convert text tool calls,
check calls against their schemas and later retry or error results, deduplicate, split by session), written
the straightforward way with json, dicts and jsonschema, one record at a time."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path


def baseline(inputs: list[Path], out_dir: Path, seed: int = 0) -> dict:
    """The same stages, written the straightforward way: json + dicts + jsonschema, one record at a time."""
    import hashlib

    import jsonschema

    from core.trace import trace_files, validation_errors
    from curate.config import Config
    from curate.textcalls import DETECT, parse_text_calls

    config = Config()
    markers = [re.compile(p.replace("(?i)", ""), re.I) for p in config.all_markers().values()]
    detect = [re.compile(p) for p in DETECT.values()]
    retry = re.compile(config.retry_prompt_pattern)
    error = re.compile(config.tool_error_pattern.replace("(?i)", ""), re.I)
    validators: dict[str, jsonschema.Draft202012Validator] = {}
    counts = {"lines": 0, "rejected": 0}

    def canon_args(arguments):
        if isinstance(arguments, str):
            try:
                return json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                return None
        return {} if arguments is None else arguments

    def canon_message(message):
        calls = [
            (
                c["function"].get("name"),
                json.dumps(canon_args(c["function"].get("arguments")), sort_keys=True),
            )
            for c in message.get("tool_calls") or []
        ]
        return json.dumps(
            [message.get("role") or "assistant", message.get("content") or "", calls], sort_keys=True
        )

    exchanges = []
    for path in trace_files(inputs):
        with open(path, "rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                counts["lines"] += 1
                if not raw.endswith(b"\n"):
                    counts["rejected"] += 1
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    counts["rejected"] += 1
                    continue
                if not isinstance(record, dict) or validation_errors(record):
                    counts["rejected"] += 1
                    continue
                if (
                    record["http_status"] is None
                    or record["http_status"] >= 400
                    or record["error"]
                    or not record["response"]
                    or not record["response"]["choices"]
                ):
                    counts["rejected"] += 1
                    continue
                conversation = [*record["request"]["messages"], record["response"]["choices"][0]["message"]]
                ids = {}
                keys, digest = (
                    [],
                    hashlib.blake2b(
                        json.dumps(record["request"].get("tools"), sort_keys=True).encode()
                        + (record["session_id"] or "").encode()
                    ),
                )
                for pos, message in enumerate(conversation):
                    for k, call in enumerate(message.get("tool_calls") or []):
                        ids[call.get("id")] = f"{pos}.{k}"
                    text = canon_message(message) + ids.get(message.get("tool_call_id"), "")
                    digest.update(text.encode())
                    keys.append(digest.copy().hexdigest())
                exchanges.append((record, keys, f"{path}:{line_no}"))
    prefixes = {}
    for index, (_, keys, _) in enumerate(exchanges):
        for key in keys:
            prefixes.setdefault(key, []).append((len(keys), index))
    # an exchange is a head when no longer exchange (or earlier identical one) contains its conversation
    heads = [
        e for i, e in enumerate(exchanges) if max(prefixes[e[1][-1]], key=lambda t: (t[0], -t[1]))[1] == i
    ]
    samples, seen_exact, seen_near = [], set(), {}
    for record, _, where in heads:
        tools = record["request"].get("tools") or []
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
        messages = []
        for message in [*record["request"]["messages"], record["response"]["choices"][0]["message"]]:
            message = dict(message)
            if message.get("role") in ("user", "system") and isinstance(message.get("content"), str):
                for pattern in markers:
                    message["content"] = pattern.sub("", message["content"])
                message["content"] = message["content"].strip()
            messages.append(message)
        intent = ""
        for pos, message in enumerate(messages):
            if message.get("role") == "user":
                intent = re.sub(r"\W+", " ", (message.get("content") or "").lower()).strip()
            if message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content") or ""
            calls = list(message.get("tool_calls") or [])
            if not calls and any(p.search(content) for p in detect):
                parsed = parse_text_calls(content, schemas)
                if parsed.status != "converted":
                    continue
                calls = [
                    {"id": f"t{pos}.{k}", "type": "function", "function": {"name": n, "arguments": a}}
                    for k, (n, a) in enumerate(parsed.calls)
                ]
                message = {**message, "content": parsed.content, "tool_calls": calls}
                messages[pos] = message
            if not calls and not content.strip():
                continue
            ok = True
            for call in calls:
                function = call["function"]
                args = canon_args(function.get("arguments"))
                if function["name"] not in schemas or not isinstance(args, dict):
                    ok = False
                    break
                schema_key = json.dumps(schemas[function["name"]], sort_keys=True)
                validator = validators.setdefault(
                    schema_key, jsonschema.Draft202012Validator(schemas[function["name"]])
                )
                if not validator.is_valid(args):
                    ok = False
                    break
                for later in messages[pos + 1 :]:
                    if later.get("role") == "tool" and later.get("tool_call_id") == call.get("id"):
                        if retry.search(later.get("content") or "") or error.search(
                            later.get("content") or ""
                        ):
                            ok = False
                        break
            if not ok:
                continue
            out_messages = []
            for m in messages[: pos + 1]:
                item = {"role": m.get("role") or "assistant", "content": m.get("content") or ""}
                if m.get("tool_calls"):
                    item["tool_calls"] = [
                        {
                            "id": c.get("id"),
                            "type": "function",
                            "function": {
                                "name": c["function"]["name"],
                                "arguments": canon_args(c["function"].get("arguments")),
                            },
                        }
                        for c in m["tool_calls"]
                    ]
                if m.get("role") == "tool":
                    item["tool_call_id"] = m.get("tool_call_id")
                out_messages.append(item)
            exact = hashlib.blake2b(
                json.dumps([tools, [canon_message(m) for m in out_messages]], sort_keys=True).encode()
            ).hexdigest()
            target = (
                json.dumps(
                    sorted(
                        (
                            c["function"]["name"],
                            json.dumps(canon_args(c["function"].get("arguments")), sort_keys=True),
                        )
                        for c in calls
                    )
                )
                if calls
                else content
            )
            near = (json.dumps(tools, sort_keys=True), intent, target)
            trajectory = record["session_id"] or where
            if exact in seen_exact or seen_near.setdefault(near, trajectory) != trajectory:
                continue  # a near duplicate only when another trajectory made the same call first
            seen_exact.add(exact)
            samples.append((trajectory, json.dumps({"messages": out_messages, "tools": tools})))
    rng = random.Random(seed)
    sessions = sorted({s for s, _ in samples})
    rng.shuffle(sessions)
    cut = {
        s: ("train" if i < 0.8 * len(sessions) else "valid" if i < 0.9 * len(sessions) else "test")
        for i, s in enumerate(sessions)
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    handles = {name: open(out_dir / f"{name}.jsonl", "w") for name in ("train", "valid", "test")}  # noqa: SIM115
    for session, line in samples:
        handles[cut[session]].write(line + "\n")
    for handle in handles.values():
        handle.close()
    return {"lines": counts["lines"], "samples": len(samples)}
