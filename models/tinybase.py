"""The demo's student: the tiny model pre-trained on a generic copy corpus, like a (very) small base model.

A random-weight 0.8M-parameter model fine-tuned on the demo's traces learns the tool-call format and the
tool names, but not to copy a file name or a value it has never seen from the prompt into the arguments:
that skill (induction heads) is what real base models bring from pre-training. So the demo student is
pre-trained first, on text that has nothing to do with tools or the task suites:

- random token spans repeated after a newline (the classic induction-head curriculum);
- generic prose, key = value tables, JSON objects and backticked names that are later quoted, looked up or
  echoed, with names and words drawn from random syllables and a generic word list.

It never sees the chat template, a tool definition, a tool call or a suite's pools.

    uv run python -m models.tinybase OUT [--steps N]

Pre-training costs minutes on a 2-core CPU, so the result ships in the repository
(`models/assets/tiny-base/`, ~3 MB) and `cached_base()` returns it; this module is the command that
produced it, and `tests/test_tinybase.py` checks what it can and cannot do.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from models import corpus

ASSET_DIR = Path(__file__).parent / "assets" / "tiny-base"
SEQUENCE_LENGTH = 128
BATCH_SIZE = 32
STEPS = 4000
LEARNING_RATE = 3e-3
WARMUP = 100
INDUCTION_SHARE = 0.4
PROBE_EVERY = 250

CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"
EXTENSIONS = [
    ".txt",
    ".md",
    ".py",
    ".json",
    ".toml",
    ".cfg",
    ".ini",
    ".yaml",
    ".log",
    ".env",
    ".conf",
    ".csv",
]


def syllable_word(rng: random.Random) -> str:
    return "".join(
        rng.choice(CONSONANTS) + rng.choice(VOWELS) + (rng.choice(CONSONANTS) if rng.random() < 0.4 else "")
        for _ in range(rng.choice([1, 2, 2, 3]))
    )


def word(rng: random.Random) -> str:
    return rng.choice(corpus.WORDS) if rng.random() < 0.5 else syllable_word(rng)


def name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return word(rng) + rng.choice(EXTENSIONS)
    if roll < 0.6:
        return word(rng) + rng.choice(["_", "-", ""]) + word(rng) + rng.choice(EXTENSIONS)
    if roll < 0.8:
        return word(rng)
    return str(rng.randint(0, 9999))


def phrase(rng: random.Random) -> str:
    return " ".join(word(rng) for _ in range(rng.randint(1, 4)))


def text_document(rng: random.Random) -> str:
    """One generic document whose continuation needs a span copied from earlier in it."""
    kind = rng.randrange(6)
    if kind == 0:
        span = " ".join(word(rng) for _ in range(rng.randint(3, 12)))
        return f"{span}\n{span}"
    if kind == 1:
        items = [name(rng) for _ in range(rng.randint(1, 3))]
        intro = rng.choice(["Look at", "We changed", "Please see", "Notes on", "About"])
        key = rng.choice(["file", "name", "path", "value", "word", "item"])
        return (
            f"{intro} "
            + " and ".join(f"`{item}`" for item in items)
            + ".\n"
            + json.dumps({key: rng.choice(items)})
        )
    if kind == 2:
        table = {key: str(rng.randint(0, 999)) for key in {word(rng) for _ in range(rng.randint(2, 6))}}
        key = rng.choice(list(table))
        return "\n".join(f"{k} = {v}" for k, v in table.items()) + f"\n{key}: {table[key]}"
    if kind == 3:
        target, text = name(rng), phrase(rng)
        return f"Put `{text}` in `{target}`.\n" + json.dumps({"target": target, "text": text})
    if kind == 4:
        item = name(rng)
        return f"{corpus.random_sentence(rng)} `{item}` {corpus.random_sentence(rng)}\nanswer: {item}"
    fields = {word(rng): name(rng) for _ in range(rng.randint(1, 3))}
    key = rng.choice(list(fields))
    return json.dumps(fields) + f"\n{key} -> {fields[key]}"


def token_stream(tokenizer, rng: random.Random, vocab_size: int):
    """Endless token ids: documents separated by the end-of-text token."""
    newline = tokenizer.encode("\n")[-1]
    first_regular = len(tokenizer.all_special_ids) + 16
    while True:
        if rng.random() < INDUCTION_SHARE:
            span = [rng.randrange(first_regular, vocab_size) for _ in range(rng.randint(4, 16))]
            yield from span + [newline] + span
        else:
            yield from tokenizer.encode(text_document(rng))
        yield tokenizer.eos_token_id


def copy_probe(model, tokenizer, seed: int = 99, count: int = 50) -> dict[str, float]:
    """Greedy exact-copy rates on fresh documents of three shapes (never the training stream's seed)."""
    import mlx.core as mx

    rng = random.Random(seed)

    def continue_until(prompt: str, stop: str, max_tokens: int = 12) -> str:
        ids, out = tokenizer.encode(prompt), []
        for _ in range(max_tokens):
            out.append(int(mx.argmax(model(mx.array([ids + out]))[0, -1])))
            if stop in tokenizer.decode(out):
                break
        return tokenizer.decode(out).split(stop)[0]

    scores = {"backtick_to_json": 0, "key_lookup": 0, "repeat": 0}
    for _ in range(count):
        item = name(rng)
        scores["backtick_to_json"] += continue_until(f'Please see `{item}`.\n{{"path": "', '"') == item
        table = {key: str(rng.randint(0, 999)) for key in {word(rng) for _ in range(4)}}
        key = rng.choice(list(table))
        text = "\n".join(f"{k} = {v}" for k, v in table.items())
        scores["key_lookup"] += continue_until(f"{text}\n{key}:", "\n").strip() == table[key]
        span = " ".join(word(rng) for _ in range(5))
        scores["repeat"] += continue_until(f"{span}\n", "\n", 24).strip() == span
    return {key: value / count for key, value in scores.items()}


def build_base_tiny_model(out_dir: Path, *, seed: int = 0, steps: int = STEPS, log=print) -> dict:
    """Pre-train the random tiny model (`models.tiny.build_tiny_model`) on the copy corpus."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm import load

    from models.tiny import build_tiny_model

    out_dir = build_tiny_model(out_dir, seed=seed)
    model, tokenizer = load(str(out_dir))
    vocab_size = model.args.vocab_size
    mx.random.seed(seed)
    stream = token_stream(tokenizer, random.Random(seed + 1), vocab_size)

    def loss_fn(model, batch):
        logits = model(batch[:, :-1])
        return nn.losses.cross_entropy(logits, batch[:, 1:]).mean()

    warmup = optim.linear_schedule(1e-5, LEARNING_RATE, WARMUP)
    decay = optim.cosine_decay(LEARNING_RATE, max(steps - WARMUP, 1), LEARNING_RATE / 20)
    optimizer = optim.AdamW(learning_rate=optim.join_schedules([warmup, decay], [WARMUP]), weight_decay=0.0)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    def step(batch):
        loss, grads = loss_and_grad(model, batch)
        optimizer.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)

    def save(index: int) -> None:
        # Written at every probe, atomically, so a long build can be inspected (or used) while it runs.
        partial = out_dir / "partial.safetensors"
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(partial), weights, metadata={"format": "mlx", "step": str(index)})
        partial.replace(out_dir / "model.safetensors")

    history, started = [], time.perf_counter()
    for index in range(1, steps + 1):
        batch = np.fromiter(stream, dtype=np.int32, count=BATCH_SIZE * SEQUENCE_LENGTH)
        loss = step(mx.array(batch.reshape(BATCH_SIZE, SEQUENCE_LENGTH)))
        mx.eval(state, loss)
        if index % PROBE_EVERY == 0 or index == steps:
            probe = copy_probe(model, tokenizer)
            history.append({"step": index, "loss": round(loss.item(), 4), **probe})
            log(json.dumps({**history[-1], "seconds": round(time.perf_counter() - started, 1)}))
            save(index)
    info = {
        "kind": "tiny base (copy-corpus pre-trained)",
        "seed": seed,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "sequence_length": SEQUENCE_LENGTH,
        "learning_rate": LEARNING_RATE,
        "induction_share": INDUCTION_SHARE,
        "seconds": round(time.perf_counter() - started, 1),
        "probe": history[-1] if history else {},
        "history": history,
    }
    (out_dir / "flywheel-model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def cached_base() -> Path:
    """The shipped pre-trained base (see the module docstring)."""
    if not (ASSET_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{ASSET_DIR}: the tiny base model is missing; rebuild it with `uv run python -m models.tinybase {ASSET_DIR}`"
        )
    return ASSET_DIR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.tinybase",
        description="Pre-train the tiny model on a generic copy corpus (the demo's student base model).",
        epilog=f"example: python -m models.tinybase /tmp/tiny-base --steps {STEPS}",
    )
    parser.add_argument("out", type=Path, help="directory to write the model into (replaced)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, tokenizer and corpus (default: 0)"
    )
    parser.add_argument("--steps", type=int, default=STEPS, help=f"pre-training steps (default: {STEPS})")
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    info = build_base_tiny_model(args.out, seed=args.seed, steps=args.steps)
    print(json.dumps({key: value for key, value in info.items() if key != "history"}))


if __name__ == "__main__":
    main()
