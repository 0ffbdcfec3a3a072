"""The tiny test model: its files, tokenizer, chat template, training data, cache, and real `mlx_lm server` use.

Fixtures `tiny_model`, `tool_model` and `tool_server` come from tests/conftest.py (cached_model + MlxServer).
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from core.process import MlxServer
from models.tiny import (
    AGENT_TOOLS,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    TOOL_TOKENS,
    build_tiny_model,
    cached_model,
    check_tool_calls,
    tool_call_samples,
)

TRICKY_TEXTS = [
    "plain ascii words",
    "café naïve résumé Zürich — “quotes” € ¥",
    "日本語のテキスト 中文 한국어 Привет Ελληνικά",
    "emoji 🙂🚀 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "line one\nline two\n\n\nafter blank lines\r\nwindows line\ttab\n",
    '{"name": "write_file", "arguments": {"path": "a/b.py", "content": "x = \\"1\\"\\n\\tprint(x)\\u00e9"}}',
    "def f(x):\n    if x:\n        return {'a': [1, 2.5e-3, None]}\n    return x  # comment\n",
    "trailing spaces   \n    indented\n        more  ",
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "src/app.py"}}\n</tool_call>',
    "symbols ~!@#$%^&*()_+`-=[]{}|;':\",./<>? \\ end",
    "'s 've 're 'll 'd 'm 'S 'T case marks",
]

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Read a.py and b.py."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read_file", "arguments": {"path": "a.py"}},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "b.py"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "print('a')"},
    {"role": "tool", "tool_call_id": "call_2", "content": "print('b')"},
    {"role": "assistant", "content": "Both print a letter."},
]

EXPECTED_CONVERSATION = (
    "<|im_start|>system\nBe brief.\n<tools>\n"
    "read_file(path)\nwrite_file(path, content)\nlist_files(path)\nrun_command(command, args, cwd?)\n"
    "</tools><|im_end|>\n"
    "<|im_start|>user\nRead a.py and b.py.<|im_end|>\n"
    "<|im_start|>assistant\n"
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "b.py"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\nprint('a')\n</tool_response>\n"
    "<tool_response>\nprint('b')\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nBoth print a letter.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from mlx_lm import load

    return load(str(tiny_model))


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


# ------------------------------------------------------------------------------------- files and tokenizer


def test_model_directory_loads_with_the_expected_architecture(tiny_model, loaded):
    import mlx.core as mx

    model, tokenizer = loaded
    config = json.loads((tiny_model / "config.json").read_text())
    generation = json.loads((tiny_model / "generation_config.json").read_text())
    tokenizer_config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert config["model_type"] == "qwen2" and config["torch_dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (2, 128, 384)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["tie_word_embeddings"] is True and "rope_theta" in config
    assert 1800 <= config["vocab_size"] == len(tokenizer) <= 2100
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert config["eos_token_id"] == generation["eos_token_id"] == eos_id
    assert tokenizer_config["eos_token"] == EOS_TOKEN and tokenizer.eos_token_id == eos_id
    assert tokenizer.eos_token_ids == {eos_id}
    logits = model(mx.array([tokenizer.encode("hello world")]))
    assert logits.shape[-1] == config["vocab_size"] and logits.dtype == mx.float32


def test_mlx_lm_selects_the_json_tools_parser(loaded):
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    _, tokenizer = loaded
    assert tokenizer.has_tool_calling
    assert tokenizer.tool_parser.__module__ == "mlx_lm.tool_parsers.json_tools"
    assert (tokenizer.tool_call_start, tokenizer.tool_call_end) == ("<tool_call>", "</tool_call>")
    assert len(tokenizer.tool_call_start_tokens) == 1 and len(tokenizer.tool_call_end_tokens) == 1
    assert isinstance(tokenizer.detokenizer, BPEStreamingDetokenizer)
    assert not tokenizer.has_thinking


def test_markers_are_single_tokens_and_only_chat_markers_are_special(hf_tokenizer, loaded):
    _, wrapper = loaded
    ids = set()
    for token in SPECIAL_TOKENS + TOOL_TOKENS:
        (token_id,) = hf_tokenizer.encode(token, add_special_tokens=False)
        assert wrapper.encode(token, add_special_tokens=False) == [token_id]
        assert hf_tokenizer.convert_ids_to_tokens(token_id) == token
        ids.add(token_id)
    assert len(ids) == len(SPECIAL_TOKENS + TOOL_TOKENS)
    assert set(SPECIAL_TOKENS) <= set(hf_tokenizer.all_special_tokens)
    assert not set(TOOL_TOKENS) & set(hf_tokenizer.all_special_tokens)
    # The reason the tool markers are not special: they survive skip_special_tokens=True.
    text = '<|im_start|>assistant\n<tool_call>\n{"name": "x"}\n</tool_call><|im_end|>'
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert (
        hf_tokenizer.decode(ids, skip_special_tokens=True)
        == 'assistant\n<tool_call>\n{"name": "x"}\n</tool_call>'
    )


def test_transformers_uses_the_pipeline_the_bpe_was_trained_with(tiny_model, hf_tokenizer):
    from tokenizers import Tokenizer

    assert type(hf_tokenizer).__name__ == "Qwen2Tokenizer"
    trained = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    sample = " ".join(TRICKY_TEXTS)
    assert trained.encode(sample).ids == hf_tokenizer.encode(sample, add_special_tokens=False)


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_encode_decode_round_trips(text, hf_tokenizer, loaded):
    _, wrapper = loaded
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert hf_tokenizer.decode(ids) == text
    assert wrapper.decode(wrapper.encode(text, add_special_tokens=False)) == text
    # The server's path: one token at a time through mlx-lm's streaming detokenizer.
    detokenizer = wrapper.detokenizer
    for token in ids:
        detokenizer.add_token(token)
    detokenizer.finalize()
    assert detokenizer.text == text


def test_text_is_normalized_to_nfc(hf_tokenizer):
    decomposed = "cafe\u0301"
    assert hf_tokenizer.decode(hf_tokenizer.encode(decomposed, add_special_tokens=False)) == "caf\u00e9"


def test_common_agent_text_is_compact(loaded):
    _, tokenizer = loaded
    sample = tool_call_samples(1, seed=3)[0]
    prompt = tokenizer.apply_chat_template(
        sample["messages"][:2], tools=AGENT_TOOLS, add_generation_prompt=True
    )
    assert len(prompt) < 80, (
        "the tool listing or BPE got long: tiny-model training cost grows with prompt tokens"
    )


# ------------------------------------------------------------------------------------- chat template


def test_template_renders_tools_calls_and_responses_exactly(loaded):
    _, tokenizer = loaded
    text = tokenizer.apply_chat_template(CONVERSATION, tools=AGENT_TOOLS, tokenize=False)
    assert text == EXPECTED_CONVERSATION
    with_prompt = tokenizer.apply_chat_template(
        CONVERSATION[:-1], tools=AGENT_TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert (
        with_prompt
        == EXPECTED_CONVERSATION.rsplit("<|im_start|>assistant\nBoth", 1)[0] + "<|im_start|>assistant\n"
    )


def test_dict_and_string_arguments_render_the_same(loaded):
    _, tokenizer = loaded
    as_dict = copy.deepcopy(CONVERSATION)
    as_string = copy.deepcopy(CONVERSATION)
    for call in as_string[2]["tool_calls"]:
        if isinstance(call["function"]["arguments"], dict):
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    for call in as_dict[2]["tool_calls"]:
        if isinstance(call["function"]["arguments"], str):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    render = lambda messages: tokenizer.apply_chat_template(messages, tools=AGENT_TOOLS, tokenize=False)  # noqa: E731
    assert render(as_dict) == render(as_string) == EXPECTED_CONVERSATION


def test_template_without_tools_or_system_prompt(loaded):
    _, tokenizer = loaded
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    )
    assert "<tool_call>" in CHAT_TEMPLATE and "tool_call.name" in CHAT_TEMPLATE


def test_training_renders_the_prompt_the_server_renders(loaded):
    """mlx-lm's ChatDataset (mask_prompt) trains on exactly the tokens the server generates after its prompt."""
    from mlx_lm.server import process_message_content
    from mlx_lm.tuner.datasets import ChatDataset

    _, tokenizer = loaded
    sample = copy.deepcopy(CONVERSATION)
    tokens, offset = ChatDataset(
        [{"messages": sample, "tools": AGENT_TOOLS}], tokenizer, mask_prompt=True
    ).process({"messages": sample, "tools": AGENT_TOOLS})
    # What a client sends: OpenAI-style string arguments, which the server turns into dicts.
    request = copy.deepcopy(CONVERSATION[:-1])
    for call in request[2]["tool_calls"]:
        if isinstance(call["function"]["arguments"], dict):
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    process_message_content(request)
    server_prompt = tokenizer.apply_chat_template(request, tools=AGENT_TOOLS, add_generation_prompt=True)
    assert tokens[:offset] == server_prompt
    assert tokenizer.decode(tokens[offset:]) == "Both print a letter.<|im_end|>\n"


# ------------------------------------------------------------------------------------- training data


def test_tool_call_samples_are_valid_openai_chats():
    samples = tool_call_samples(300, seed=7)
    assert samples == tool_call_samples(300, seed=7)
    assert samples != tool_call_samples(300, seed=8)
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in AGENT_TOOLS}
    names, endings, parallel = set(), {"call": 0, "answer": 0}, 0
    for sample in samples:
        messages = sample["messages"]
        assert sample["tools"] == AGENT_TOOLS
        assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert messages[1]["role"] == "user" and messages[1]["content"]
        call_ids = set()
        for message in messages[2:]:
            if message["role"] == "assistant" and message.get("tool_calls"):
                parallel += len(message["tool_calls"]) > 1
                for call in message["tool_calls"]:
                    assert call["type"] == "function" and call["id"].startswith("call_")
                    function = call["function"]
                    assert isinstance(function["arguments"], dict)
                    jsonschema.validate(function["arguments"], schemas[function["name"]])
                    names.add(function["name"])
                    call_ids.add(call["id"])
            elif message["role"] == "tool":
                assert message["tool_call_id"] in call_ids and isinstance(message["content"], str)
            else:
                assert (
                    message["role"] == "assistant"
                    and message["content"]
                    and "<tool_call>" not in message["content"]
                )
        endings["answer" if messages[-1].get("content") else "call"] += 1
    assert names == set(schemas)
    assert endings["answer"] > 50 and endings["call"] > 150 and parallel > 10


def test_agent_tools_are_valid_openai_function_schemas():
    names = [tool["function"]["name"] for tool in AGENT_TOOLS]
    assert names == ["read_file", "write_file", "list_files", "run_command"]
    for tool in AGENT_TOOLS:
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
    run = AGENT_TOOLS[3]["function"]["parameters"]
    assert run["required"] == ["command", "args"] and run["properties"]["args"]["items"] == {"type": "string"}


# ------------------------------------------------------------------------------------- building and cache


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic_per_seed(tmp_path):
    first = _digest(build_tiny_model(tmp_path / "a", seed=3))
    again = _digest(build_tiny_model(tmp_path / "b", seed=3))
    other = _digest(build_tiny_model(tmp_path / "c", seed=4))
    assert first == again
    assert first["model.safetensors"] != other["model.safetensors"]


def test_cached_model_builds_once_and_survives_a_race(tmp_path):
    script = (
        "import sys; from models.tiny import cached_model; print(cached_model('random', sys.argv[1]))"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = {racer.communicate(timeout=240)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    (path,) = paths
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(path).name]
    before = _digest(Path(path))
    assert cached_model("random", tmp_path) == Path(path)
    assert _digest(Path(path)) == before
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(before)


def test_cached_model_rejects_an_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model kind 'huge'"):
        cached_model("huge", tmp_path)


def test_cli_help_explains_with_an_example():
    result = subprocess.run(
        [sys.executable, "-m", "models.tiny", "--help"], capture_output=True, text=True, check=True
    )
    assert "--kind" in result.stdout and "example:" in result.stdout


# ------------------------------------------------------------------------------------- the trained model


def test_tool_model_calls_the_right_tool_and_stops_after_results(tool_model):
    scores = check_tool_calls(tool_model, tool_call_samples(20, seed=4242))
    assert scores["calls"] == 20 and scores["answers"] > 0
    assert scores["parsed"] >= 18 and scores["right_name"] >= 18, scores
    assert scores["stopped"] >= scores["answers"] - 1, scores


# ------------------------------------------------------------------------------------- real mlx_lm server


def test_server_answers_a_chat_with_the_random_model(tiny_model):
    import openai

    with MlxServer(tiny_model, max_tokens=16) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        reply = client.chat.completions.create(
            model="default_model", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
    choice = reply.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert isinstance(choice.message.content, str) and reply.usage.completion_tokens >= 1


def _request(content: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def _chat(server, messages: list[dict], **options):
    """The served model's greedy reply to `messages` with the agent tools, through the real OpenAI client."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    return client.chat.completions.create(
        model="default_model", messages=messages, tools=AGENT_TOOLS, temperature=0, **options
    )


def test_server_returns_structured_tool_calls(tool_server):
    reply = _chat(tool_server, _request("Read `src/main.py`."))
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content in (None, "")
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "read_file"
    assert set(json.loads(call.function.arguments)) == {"path"}


def test_server_returns_parallel_tool_calls(tool_server):
    reply = _chat(tool_server, _request("Read `src/main.py` and `tests/test_app.py`."))
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert [call.function.name for call in calls] == ["read_file", "read_file"]
    assert len({call.id for call in calls}) == 2


def test_server_streams_structured_tool_calls(tool_server):
    stream = _chat(tool_server, _request("List the files in `src`."), stream=True)
    names, arguments, finish = {}, {}, None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function.name:
                    names[delta.index] = delta.function.name
                arguments[delta.index] = arguments.get(delta.index, "") + (delta.function.arguments or "")
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert names == {0: "list_files"}
    assert set(json.loads(arguments[0])) == {"path"}


def test_server_answers_in_text_after_a_tool_result(tool_server):
    messages = _request("Read `notes/todo.md`.") + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "notes/todo.md"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "TODO: write tests\n"},
    ]
    reply = _chat(tool_server, messages)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert choice.message.content.strip()
