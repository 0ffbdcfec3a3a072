"""A tiny Qwen2-style tool-calling model, built locally in seconds with no download, for tests and the demo.

    build_tiny_model(out_dir)               random weights (~0.5 s): loads with mlx_lm.load, serves with mlx_lm server
    build_tool_calling_tiny_model(out_dir)  the same, fully fine-tuned on `tooldata.tool_call_samples` (~35 s of CPU)
    cached_model("random" | "tool-calling") built once into $FLYWHEEL_CACHE (default ~/.cache/flywheel)

    python -m models.tiny /tmp/tiny-tools --kind tool-calling --check 40

The directory holds `config.json` (Qwen2: 2 layers, hidden 128, 4 heads / 2 KV heads, FFN 384, tied
embeddings, float32, ~0.66M parameters), `model.safetensors`, `generation_config.json`, `tokenizer.json`
(byte-level BPE, 2,048 tokens, trained here on `models.corpus` plus chats of `models.tooldata`, rendered) and
`tokenizer_config.json` with a compact Qwen2.5-style chat template.

Tokenizer pipeline: transformers >= 5 loads every `model_type: qwen2` tokenizer as `Qwen2Tokenizer`, which
replaces the normalizer and pre-tokenizer of `tokenizer.json` with its own (NFC, the Qwen split regex,
ByteLevel without prefix space). The BPE is trained with exactly that pipeline (the regex is imported from
transformers), so what `tokenizers` learned is what transformers and mlx-lm use.

Special tokens: `<|endoftext|>`, `<|im_start|>` and `<|im_end|>` are special. The tool markers `<tool_call>`,
`</tool_call>`, `<tool_response>`, `</tool_response>`, `<tools>` and `</tools>` are single tokens (added
tokens, never split, one id each) but NOT special, as in Qwen2.5's own tokenizer. Marking them special would
not break mlx_lm server: it detokenizes with `BPEStreamingDetokenizer`, which maps ids through
`convert_ids_to_tokens` and keeps special tokens, and `make_text_state_machine` finds calls by matching the
text `<tool_call>`. But any `decode(..., skip_special_tokens=True)` (HF pipelines, vLLM's default, many
scripts) drops special tokens and turns a tool call into bare JSON; non-special added tokens survive it.

What the trained model does (CPU, this recipe, greedy): on 80 fresh training-style prompts, 5 seeds gave
80, 77, 79, 80, 80 calls that mlx-lm's json_tools parser parses with the right tool name, parallel reads give
two calls, and after a tool result it answers in text and stops. It does NOT copy argument values from the
request (exact arguments ~1/80): it names the right tool with plausible but usually wrong arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.tools import AGENT_TOOLS, SYSTEM_PROMPT  # noqa: F401  (re-exported: the tests read them here)
from models import corpus, tooldata
from models.tooldata import tool_call_samples

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>", "</tools>"]
EOS_TOKEN = "<|im_end|>"
VOCAB_SIZE = 2048

MODEL_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}

DEFAULT_SYSTEM_PROMPT = "You are a helpful coding assistant."

# Qwen2.5's template, with one short line per tool instead of each tool's full JSON schema: a tiny model on a
# CPU pays for every prompt token. Both `<tool_call>` and `tool_call.name` appear in it, which is how mlx-lm
# (`_infer_tool_parser`) picks its `json_tools` parser.
CHAT_TEMPLATE = (
    """\
{%- if messages and messages[0].role == 'system' %}
    {%- set system_text = messages[0].content or '' %}
{%- else %}
    {%- set system_text = '"""
    + DEFAULT_SYSTEM_PROMPT
    + """' %}
{%- endif %}
{{- '<|im_start|>system\\n' + system_text }}
{%- if tools %}
    {{- '\\n<tools>' }}
    {%- for tool in tools %}
        {%- set fn = tool.function if tool.function is defined else tool %}
        {%- set schema = fn.parameters if fn.parameters is defined and fn.parameters else {} %}
        {%- set required = schema.required if schema.required is defined and schema.required else [] %}
        {{- '\\n' + fn.name + '(' }}
        {%- if schema.properties is defined and schema.properties %}
            {%- for param in schema.properties %}
                {{- param }}{% if param not in required %}?{% endif %}{% if not loop.last %}, {% endif %}
            {%- endfor %}
        {%- endif %}
        {{- ')' }}
    {%- endfor %}
    {{- '\\n</tools>' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- '<|im_start|>system\\n' + (message.content or '') + '<|im_end|>\\n' }}
        {%- endif %}
    {%- elif message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {%- if tool_call.arguments is string %}{{ tool_call.arguments }}{% else %}{{ tool_call.arguments | tojson }}{% endif %}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + (message.content or '') + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
)


# ---------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(seed: int = 0):
    """A byte-level BPE (`tokenizers.Tokenizer`) with transformers' Qwen2 normalizer and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS + TOOL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.bpe_corpus(seed) + rendered_sample_pieces(seed), trainer=trainer)
    return tokenizer


def rendered_sample_pieces(seed: int, count: int = 1500) -> list[str]:
    """Chats rendered by the chat template, cut at the marker tokens (the trainer would otherwise spend merges
    on `<|`, `im`, `_start`...): makes the prompts the tiny model trains on short."""
    from transformers.utils.chat_template_utils import render_jinja_template

    markers = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS + TOOL_TOKENS))
    pieces = []
    for sample in tool_call_samples(count, seed + 1):
        (text,), _ = render_jinja_template(
            [sample["messages"]], tools=sample["tools"], chat_template=CHAT_TEMPLATE
        )
        pieces.extend(piece for piece in markers.split(text) if piece)
    return pieces


def tokenizer_files(tokenizer) -> dict[str, dict]:
    """`tokenizer.json` and `tokenizer_config.json` contents; the tool markers become non-special added tokens."""
    tokenizer_json = json.loads(tokenizer.to_str())
    added_tokens_decoder = {}
    for token in tokenizer_json["added_tokens"]:
        token["special"] = token["content"] in SPECIAL_TOKENS
        token["normalized"] = False
        added_tokens_decoder[str(token["id"])] = {k: v for k, v in token.items() if k != "id"}
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": MODEL_CONFIG["max_position_embeddings"],
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "added_tokens_decoder": added_tokens_decoder,
        "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": CHAT_TEMPLATE,
    }
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": tokenizer_config}


# ---------------------------------------------------------------------------------------------- model


def build_tiny_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a random-weight tiny model directory that `mlx_lm.load` and `mlx_lm server` accept."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.qwen2 import Model, ModelArgs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = tokenizer_files(train_tokenizer(seed))
    vocab = files["tokenizer.json"]["model"]["vocab"]
    eos_token_id = vocab[EOS_TOKEN]
    config = {**MODEL_CONFIG, "vocab_size": len(vocab), "bos_token_id": None, "eos_token_id": eos_token_id}
    generation_config = {
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": vocab["<|endoftext|>"],
    }
    for name, content in [
        *files.items(),
        ("config.json", config),
        ("generation_config.json", generation_config),
    ]:
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")

    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out_dir


# ---------------------------------------------------------------------------------------------- fine-tuning

TRAIN_STEPS = 800
TRAIN_BATCH_SIZE = 2
TRAIN_SAMPLES = 2000


def build_tool_calling_tiny_model(
    out_dir: Path, *, seed: int = 0, steps: int = TRAIN_STEPS, batch_size: int = TRAIN_BATCH_SIZE
) -> Path:
    """A random tiny model fully fine-tuned in-process with mlx-lm's tuner on `tool_call_samples`.

    Full fine-tuning, Adam, lr 1e-3 with 50 warm-up steps then cosine decay to 1e-5, loss on the last
    assistant turn only (`mask_prompt`), as in mlx-lm's `lora` CLI with `--fine-tune-type full`. Batch 2 x 800
    steps: about as reliable as 1,200 steps and better than batch 4 x 500 or batch 1 x 1,000 for the same CPU
    time; ~33 s of CPU with OpenBLAS. Deterministic for a seed on one platform (weights hash equal run to run).
    """
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import build_schedule

    out_dir = build_tiny_model(out_dir, seed=seed)
    model, tokenizer = load(str(out_dir))
    mx.random.seed(seed)
    np.random.seed(seed)  # mlx-lm's iterate_batches shuffles with the global numpy generator
    train_set = CacheDataset(ChatDataset(tool_call_samples(TRAIN_SAMPLES, seed), tokenizer, mask_prompt=True))
    warmup = min(50, steps // 4)
    schedule = build_schedule(
        {
            "name": "cosine_decay",
            "warmup": warmup,
            "arguments": [1e-3, steps - warmup, 1e-5],
        }
    )
    optimizer = optim.Adam(learning_rate=schedule)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArgs(
            batch_size=batch_size,
            iters=steps,
            steps_per_report=max(steps // 6, 1),
            steps_per_save=steps + 1,
            max_seq_length=1024,
            adapter_file=str(Path(scratch) / "weights.safetensors"),
        )
        train(model, optimizer, train_set, args=args)
    model.eval()
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out_dir


def check_tool_calls(model_dir: Path, samples: list[dict], max_tokens: int = 96) -> dict:
    """Greedy-generate replies to `samples` and parse them the way mlx_lm server does (`core.toolcalls`).

    For the first assistant turn (a tool call): `calls` asked, `parsed` by the model's tool parser, `right_name`,
    `exact` (name and arguments) of the first call. For a closing turn after tool results: `answers` asked,
    `stopped` (plain text, no tool call)."""
    from mlx_lm import generate, load

    from core.toolcalls import parse_completion, prompt_tokens

    model, tokenizer = load(str(model_dir))

    def reply(messages, tools):
        text = generate(model, tokenizer, prompt_tokens(tokenizer, messages, tools), max_tokens=max_tokens)
        return parse_completion(tokenizer, text, tools)

    counts = dict.fromkeys(["calls", "parsed", "right_name", "exact", "answers", "stopped"], 0)
    for sample in samples:
        messages, tools = sample["messages"], sample.get("tools")
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        expected = messages[first]["tool_calls"][0]["function"]
        turn = reply(messages[:first], tools)
        counts["calls"] += 1
        if turn.tool_calls:
            call = turn.tool_calls[0]
            counts["parsed"] += 1
            counts["right_name"] += call.name == expected["name"]
            counts["exact"] += call.name == expected["name"] and call.arguments == expected["arguments"]
        if messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
            turn = reply(messages[:-1], tools)
            counts["answers"] += 1
            counts["stopped"] += bool(turn.content.strip()) and not turn.tool_calls and not turn.unparsed
    return counts


# ---------------------------------------------------------------------------------------------- cache and CLI

BUILDERS = {"random": build_tiny_model, "tool-calling": build_tool_calling_tiny_model}


def default_cache_dir() -> Path:
    return Path(os.environ.get("FLYWHEEL_CACHE") or Path.home() / ".cache" / "flywheel")


def recipe_key(kind: str, seed: int = 0) -> str:
    """Hash of everything the built model depends on: the source of this module and of the text and chats it
    trains on (corpus, tooldata), the parameters, and the versions of the libraries that train the tokenizer
    and the weights."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for source in (Path(__file__), Path(corpus.__file__), Path(tooldata.__file__)):
        digest.update(source.read_bytes())
    for package in ("mlx", "mlx-lm", "tokenizers", "transformers"):
        digest.update(f"{package}={version(package)}\n".encode())
    digest.update(f"kind={kind} seed={seed}".encode())
    return digest.hexdigest()[:16]


def cached_model(kind: str = "random", cache_dir: Path | None = None, *, seed: int = 0) -> Path:
    """The model directory for `kind`, built on first use under the cache and reused afterwards.

    The build runs in a child process (with the fast BLAS on Linux, see core.blas) into a temporary
    directory that is renamed into place, so a half-built model is never seen and two racing processes
    both end up with one complete directory."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(BUILDERS)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"tiny-{kind}-{recipe_key(kind, seed)}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"flywheel: building the {kind} tiny model into {target} (first use)", file=sys.stderr, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=cache_dir))
    try:
        command = [sys.executable, "-m", "models.tiny", str(scratch / "model"), "--kind", kind]
        command += ["--seed", str(seed)]
        result = subprocess.run(
            command, env=_build_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if result.returncode != 0:
            log = result.stdout.decode(errors="replace")[-3000:]
            raise RuntimeError(f"building the {kind} tiny model failed (exit {result.returncode}):\n{log}")
        try:
            (scratch / "model").rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build_environment() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # The tiny model's matrices are too small for BLAS threads to pay; one thread is faster on a busy CPU.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from core.blas import child_environment
    except ImportError:
        return env
    return child_environment(env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.tiny",
        description="Build the tiny Qwen2-style test model (random weights, or fine-tuned to call the agent tools).",
        epilog="example: python -m models.tiny /tmp/tiny-tools --kind tool-calling",
    )
    parser.add_argument("out", type=Path, help="directory to write the model into (created)")
    parser.add_argument(
        "--kind", choices=sorted(BUILDERS), default="random", help="which model (default: random)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, data and tokenizer (default: 0)"
    )
    parser.add_argument(
        "--steps", type=int, default=TRAIN_STEPS, help="training steps for --kind tool-calling"
    )
    parser.add_argument(
        "--check", type=int, default=0, metavar="N", help="afterwards, score N fresh tool prompts"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.kind == "random":
        build_tiny_model(args.out, seed=args.seed)
    else:
        build_tool_calling_tiny_model(args.out, seed=args.seed, steps=args.steps)
    report = {"model": str(args.out), "kind": args.kind, "seconds": round(time.perf_counter() - started, 1)}
    if args.check:
        report["check"] = check_tool_calls(args.out, tool_call_samples(args.check, seed=args.seed + 10_000))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
