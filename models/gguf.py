"""Convert a llama.cpp GGUF (qwen2 or llama architecture, byte-level BPE vocabulary) to an mlx-lm directory.

    convert_gguf("model.gguf", "out/")           # f32 safetensors, config.json, tokenizer files
    python -m models convert model.gguf out/ --dtype bfloat16

No torch: tensors are dequantized with the `gguf` package (any type it knows: Q4_K, Q5_0, Q6_K, Q8_0, F16...),
renamed to mlx-lm's names and checked against mlx-lm's model class before saving with mlx-lm's own `save_model`.
The tokenizer is rebuilt from the `tokenizer.ggml.*` metadata (vocabulary, merges, token types, pre-tokenizer
name), the chat template from `tokenizer.chat_template`.

llama.cpp's converter permutes the rows of the Q and K projections of `llama` models (its rope pairs
neighbouring dimensions, Hugging Face's and mlx-lm's pair the two halves); we undo that permutation. `qwen2`
files are not permuted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUPPORTED_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
DTYPES = ("float32", "float16", "bfloat16")

# token types of tokenizer.ggml.token_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of llama.cpp's pre-tokenizers, as Hugging Face tokenizers write them.
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "codeshell": "digits+gpt2",
    "gpt2": "gpt2",
    "default": "gpt2",
}

LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFConvertError(ValueError):
    pass


def read_metadata(reader) -> dict:
    """The GGUF key/value metadata as plain Python values (strings, numbers, lists)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def mlx_name(gguf_name: str) -> str | None:
    """mlx-lm parameter name of a GGUF tensor (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[parts[0]]}.{parts[1]}"
    return None


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to llama Q/K rows (half-split rope -> interleaved rope)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama_cpp_unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `llama_cpp_permute`: back to the Hugging Face / mlx-lm row order."""
    return (
        weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _get(meta: dict, key: str, source: str, default=None, required: bool = True):
    if key in meta:
        return meta[key]
    if required and default is None:
        raise GGUFConvertError(f"{source}: metadata field {key!r} is missing")
    return default


def _f32(value) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def model_config(meta: dict, tensor_shapes: dict[str, tuple], source: str = "gguf") -> dict:
    """mlx-lm / Hugging Face `config.json` for the model the metadata describes."""
    arch = _get(meta, "general.architecture", source)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFConvertError(
            f"{source}: general.architecture={arch!r} is not supported (supported: {sorted(SUPPORTED_ARCHITECTURES)})"
        )
    heads = int(_get(meta, f"{arch}.attention.head_count", source))
    hidden = int(_get(meta, f"{arch}.embedding_length", source))
    if "token_embd.weight" not in tensor_shapes:
        raise GGUFConvertError(f"{source}: tensor 'token_embd.weight' is missing")
    vocab_size = int(tensor_shapes["token_embd.weight"][0])
    config = {
        "architectures": [SUPPORTED_ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": int(_get(meta, f"{arch}.block_count", source)),
        "intermediate_size": int(_get(meta, f"{arch}.feed_forward_length", source)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_get(meta, f"{arch}.attention.head_count_kv", source, heads)),
        "rms_norm_eps": _f32(_get(meta, f"{arch}.attention.layer_norm_rms_epsilon", source)),
        # mlx-lm reads rope_theta at the top level; without it the model falls back to 10000 and talks garbage
        "rope_theta": _f32(_get(meta, f"{arch}.rope.freq_base", source, 10000.0)),
        "max_position_embeddings": int(_get(meta, f"{arch}.context_length", source, 4096)),
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
    }
    head_dim = meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
    if head_dim and int(head_dim) != hidden // heads:
        config["head_dim"] = int(head_dim)
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFConvertError(
                f"{source}: {arch}.rope.scaling.type={scaling!r} is not supported (only linear)"
            )
        config["rope_scaling"] = {"type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
    if "rope_freqs.weight" in tensor_shapes:
        raise GGUFConvertError(
            f"{source}: tensor 'rope_freqs.weight' (llama3-style rope scaling) is not supported"
        )
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_q.bias" in tensor_shapes, mlp_bias=False)
    for name in ("bos", "eos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config[f"{'pad' if name == 'padding' else name}_token_id"] = int(token_id)
    return config


def end_of_turn_ids(meta: dict) -> list[int]:
    """eos, eot and eom ids, plus `<|endoftext|>` when it is a control token: llama.cpp stops on all of them."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    ids = [meta.get(f"tokenizer.ggml.{name}_token_id") for name in ("eos", "eot", "eom")]
    if "<|endoftext|>" in tokens:
        index = tokens.index("<|endoftext|>")
        types = meta.get("tokenizer.ggml.token_type") or []
        if index < len(types) and types[index] == CONTROL:
            ids.append(index)
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def build_tokenizer(meta: dict, source: str = "gguf"):
    """A `tokenizers.Tokenizer` equal to the one llama.cpp builds from the metadata (byte-level BPE only)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    kind = _get(meta, "tokenizer.ggml.model", source)
    if kind != "gpt2":
        raise GGUFConvertError(
            f"{source}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2', byte-level BPE)"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFConvertError(
            f"{source}: tokenizer.ggml.pre={pre!r} is not supported (supported: {sorted(PRE_TOKENIZERS)})"
        )
    tokens = list(_get(meta, "tokenizer.ggml.tokens", source))
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    merges = [tuple(merge.split(" ")) for merge in _get(meta, "tokenizer.ggml.merges", source)]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None:
        raise GGUFConvertError(f"{source}: tokenizer.ggml.merges[{bad}] is not two space-separated tokens")
    vocab = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    if len(vocab) != len(tokens):
        raise GGUFConvertError(
            f"{source}: tokenizer.ggml.tokens has {len(tokens) - len(vocab)} duplicate tokens"
        )
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    style = PRE_TOKENIZERS[pre]
    if style in ("qwen2", "llama3"):
        if style == "qwen2":
            tokenizer.normalizer = normalizers.NFC()
        split = QWEN2_SPLIT if style == "qwen2" else LLAMA3_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    elif style == "digits+gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [
        AddedToken(token, special=token_type == CONTROL, normalized=False)
        for token, token_type in zip(tokens, types, strict=False)
        if token_type in (CONTROL, USER_DEFINED)
    ]
    tokenizer.add_tokens(added)
    return tokenizer


def tokenizer_files(meta: dict, source: str = "gguf") -> dict[str, dict]:
    """`tokenizer.json`, `tokenizer_config.json` and `generation_config.json` contents from the metadata."""
    tokenizer = build_tokenizer(meta, source)
    tokens = meta["tokenizer.ggml.tokens"]

    def token(name: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{name}_token_id")
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    arch = meta["general.architecture"]
    config = {
        "tokenizer_class": "Qwen2Tokenizer" if arch == "qwen2" else "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding") or token("eos"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "model_max_length": int(meta.get(f"{arch}.context_length", 4096)),
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    stop = end_of_turn_ids(meta)
    generation = {
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": stop[0] if len(stop) == 1 else stop,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    return {
        "tokenizer.json": json.loads(tokenizer.to_str()),
        "tokenizer_config.json": config,
        "generation_config.json": {k: v for k, v in generation.items() if v is not None},
    }


def dequantized_weights(reader, config: dict, source: str = "gguf", progress=None):
    """Yield (mlx-lm name, float32 numpy array) for every tensor, Q/K unpermuted for llama."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        name = mlx_name(tensor.name)
        if name is None:
            raise GGUFConvertError(f"{source}: tensor {tensor.name!r} has no mlx-lm counterpart")
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            array = np.asarray(tensor.data, dtype=np.float32)
        else:
            array = dequantize(tensor.data, tensor.tensor_type)
        array = array.reshape([int(n) for n in reversed(tensor.shape)])
        if config["model_type"] == "llama" and tensor.name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = config["num_attention_heads" if "attn_q" in tensor.name else "num_key_value_heads"]
            array = llama_cpp_unpermute(array, heads)
        yield name, array
        if progress is not None:
            progress(tensor.name)


def convert_gguf(
    gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32", show_progress: bool = True
) -> Path:
    """Write an mlx-lm model directory for `gguf_path` into `out_dir`; returns `out_dir`."""
    import mlx.core as mx
    from gguf import GGUFReader
    from mlx_lm.utils import _get_classes, save_config, save_model

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise GGUFConvertError(f"dtype {dtype!r}: choose one of {DTYPES}")
    try:
        reader = GGUFReader(gguf_path)
    except (OSError, ValueError) as error:
        raise GGUFConvertError(f"{gguf_path}: not a readable GGUF file ({error})") from None
    source = str(gguf_path)
    meta = read_metadata(reader)
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    config = model_config(meta, shapes, source)
    files = tokenizer_files(meta, source)
    config["torch_dtype"] = dtype

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))  # parameters stay lazy (never computed) until replaced
    target = getattr(mx, dtype)
    weights = {}
    with _progress(show_progress, len(reader.tensors), f"converting {gguf_path.name}") as advance:
        for name, array in dequantized_weights(reader, config, source, advance):
            weights[name] = mx.array(array).astype(target)
            mx.eval(weights[name])
    weights = model.sanitize(weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as error:
        raise GGUFConvertError(
            f"{source}: weights do not fit mlx-lm's {config['model_type']} model: {error}"
        ) from None
    del weights
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(out_dir, model, donate_model=True)
    save_config(dict(config), out_dir / "config.json")
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return out_dir


class _progress:
    """A rich progress bar over `total` steps (or nothing); the context value is the per-step callback."""

    def __init__(self, show: bool, total: int, label: str):
        self.show, self.total, self.label = show, total, label

    def __enter__(self):
        if not self.show:
            return lambda _name: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda _name: self.bar.advance(task)

    def __exit__(self, *exc_info):
        if self.show:
            self.bar.stop()
