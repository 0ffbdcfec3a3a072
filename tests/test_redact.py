"""Secret redaction (proxy/redact.py): what is replaced, what ordinary code keeps, and how work grows."""

from __future__ import annotations

import importlib.util
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import redact
from proxy.redact import redact_text, redact_tree

# Each: (text with its secret marked «like this», the kind the secret is counted as).
SECRETS = [
    ("OPENAI_API_KEY=«sk-proj-abc123DEF456ghi789JKL012mno»", "openai_api_key"),
    ("key: «sk-0123456789abcdefghijABCDEFGHIJ0123456789abcd»", "openai_api_key"),
    ("ANTHROPIC_API_KEY=«sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe»", "anthropic_api_key"),
    (
        "git remote set-url origin https://«ghp_0123456789abcdefghijABCDEFGHIJ012345»@github.com/o/r",
        "github_token",
    ),
    ("token «github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz»", "github_token"),
    ("aws configure set aws_access_key_id «AKIAIOSFODNN7EXAMPLE»", "aws_access_key_id"),
    ("SLACK=«xoxb-123456789012-1234567890123-AbCdEfGhIjKl»", "slack_token"),
    ("maps key «AIzaSyA1234567890abcdefghijklmnopqrstuv»", "google_api_key"),
    ("stripe.api_key = «sk_live_4eC39HqLyjWDarjtT1zdp7dc»", "stripe_key"),
    (
        "cookie jar: «eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U»",
        "jwt",
    ),
    ("curl -H 'Authorization: Bearer «9f8e7d6c5b4a39281706f5e4d3c2b1a0»' https://api", "bearer_token"),
    ('headers = {"Authorization": "Basic «dXNlcjpodW50ZXIyMjI=»"}', "basic_auth"),
    ("DATABASE_URL=postgres://app:«Tr0ub4dor3»@db.internal:5432/app", "url_password"),
    ("DB_PASSWORD=«hunter2»", "env_secret"),
    ("export GITHUB_TOKEN='«plain-token-value»'", "env_secret"),
    ("AWS_SECRET_ACCESS_KEY=«wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY»", "env_secret"),
    ("services:\n  db:\n    environment:\n      POSTGRES_PASSWORD: «example-pw»\n", "env_secret"),
    ("    environment:\n      - MYSQL_ROOT_PASSWORD=«rootpw99»\n", "env_secret"),
    ('SECRET_KEY = "«django-insecure-9x8y7z»"', "env_secret"),
    ('{"client_secret": "«c0ffee-c0ffee-c0ffee»"}', "env_secret"),
    ("db.connect(password='«correct horse battery»')", "env_secret"),
    ("x-api-key: «0a1b2c3d4e5f»", "header_secret"),
    ("Cookie: «session=8f7e6d5c4b3a; theme=dark»", "header_secret"),
]

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpF\n"
    "-----END RSA PRIVATE KEY-----"
)

# Ordinary code, paths and prose that look a little like secrets and must come through unchanged.
ORDINARY = [
    "max_tokens=512\nTOKEN_URL=https://auth.example.com/token\nMAX_TOKENS: 4096",
    "client = OpenAI(api_key=os.environ['OPENAI_API_KEY'], base_url=base_url)",
    'provider = OpenAIProvider(base_url=proxy.base_url, api_key="x")',
    "client = make_client(\n    api_key=api_key,\n    token=get_token(),\n)",
    "class Settings(BaseModel):\n    password: str\n    API_KEY: str | None = None\n",
    "TOKEN=${GITHUB_TOKEN}\nPASSWORD=$DB_PASSWORD\nsecret_key = settings.SECRET_KEY",
    "pip install scikit-learn  # aka sk-learn-model-selection-utilities",
    "path = '/home/user/.ssh/id_rsa.pub'; open('~/.aws/credentials')",
    "def tokenize(text):\n    tokens = tokenizer.encode(text)\n    return tokens[:max_tokens]",
    "the bearer of bad news; Basic usage: see docs",
    "ssh git@github.com:owner/repo.git && https://github.com/owner/repo/blob/main/keys.py",
    "if password == expected_password:\n    return token_bytes(32)",
    'password_hint = "your first pet"\nforgot_password_url = "https://x/forgot"',
    "KEY_PREFIX=flywheel\nPUBLIC_KEY_PATH=/etc/keys/pub.pem\nSECRET_KEY_FILE=/run/secrets/key",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "AKIA is the prefix of AWS access key ids; sha = 'AKIA0000'",
    '{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}',
    "for key, value in sorted(config.items()):\n    print(f'{key}={value}')",
]


def unmarked(text: str) -> tuple[str, str]:
    """`text` without its «» marks, and the secret they enclose."""
    before, rest = text.split("«")
    secret, after = rest.split("»")
    return before + secret + after, secret


@pytest.mark.parametrize(("marked", "kind"), SECRETS)
def test_secret_is_replaced_and_counted(marked, kind):
    text, secret = unmarked(marked)
    counts = Counter()
    out = redact_text(text, counts)
    assert secret not in out, out
    assert f"[REDACTED:{kind}]" in out
    assert counts[kind] >= 1


def test_pem_private_key_whole_block():
    counts = Counter()
    out = redact_text(f"key file:\n{PEM}\nafter", counts)
    assert out == "key file:\n[REDACTED:private_key]\nafter"
    assert counts == {"private_key": 1}
    # truncated (no END line): everything from BEGIN on goes
    assert redact_text("x " + PEM.split("-----END")[0]) == "x [REDACTED:private_key]"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_code_is_unchanged(text):
    counts = Counter()
    assert redact_text(text, counts) == text
    assert not counts


def test_secrets_inside_json_encoded_tool_arguments():
    """Tool-call arguments are a JSON string: .env lines and keys inside it are escaped once."""
    arguments = json.dumps(
        {
            "path": ".env",
            "content": "DEBUG=1\nDB_PASSWORD=hunter2\nOPENAI_API_KEY=sk-abc123def456ghi789jkl012\n",
        }
    )
    counts = Counter()
    out = redact_text(arguments, counts)
    assert "hunter2" not in out and "sk-abc123def456ghi789jkl012" not in out
    assert json.loads(out)["content"] == (
        "DEBUG=1\nDB_PASSWORD=[REDACTED:env_secret]\nOPENAI_API_KEY=[REDACTED:openai_api_key]\n"
    )
    pem_args = json.dumps({"path": "id_rsa", "content": PEM})
    assert json.loads(redact_text(pem_args))["content"] == "[REDACTED:private_key]"
    # and once more escaped, as in a raw SSE body
    twice = json.dumps({"arguments": arguments})
    assert "hunter2" not in redact_text(twice)


def test_redact_tree_counts_over_a_request():
    request = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "deploy with AKIAIOSFODNN7EXAMPLE"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path": ".env"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "API_TOKEN=abc\nDB_PASSWORD=hunter2\n"},
        ],
        "max_tokens": 512,
    }
    counts = Counter()
    out = redact_tree(request, counts)
    assert counts == {"aws_access_key_id": 1, "env_secret": 2}
    assert (
        out["messages"][2]["content"]
        == "API_TOKEN=[REDACTED:env_secret]\nDB_PASSWORD=[REDACTED:env_secret]\n"
    )
    assert out["max_tokens"] == 512 and out["messages"][1] == request["messages"][1]
    assert request["messages"][0]["content"] == "deploy with AKIAIOSFODNN7EXAMPLE"  # input not mutated


def test_cached_results_count_every_time():
    text = "history line with a key sk-abc123def456ghi789jkl012 " + "x" * 100
    first, second = Counter(), Counter()
    assert redact_text(text, first) == redact_text(text, second)
    assert first == second == {"openai_api_key": 1}


alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=alphabet, max_size=400))
def test_never_raises_and_is_idempotent(text):
    once = redact_text(text)
    counts = Counter()
    assert redact_text(once, counts) == once
    assert not counts


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.text(alphabet=alphabet, max_size=60),
    suffix=st.text(alphabet=alphabet, max_size=60),
    body=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=40, max_size=48
    ),
)
def test_key_is_found_wherever_it_sits(prefix, suffix, body):
    secret = "sk-proj-7" + body
    out = redact_text(f"{prefix} {secret}\n{suffix}")
    assert secret not in out


def real_source(characters: int) -> str:
    """Real Python source code (the installed openai package), `characters` long."""
    package = Path(importlib.util.find_spec("openai").origin).parent
    text = "".join(path.read_text() for path in sorted(package.rglob("*.py")))[:characters]
    assert len(text) == characters
    return text


def test_work_grows_linearly_with_the_text():
    """Redaction runs on every exchange, so its work may grow with the text's length but never faster: eight
    copies of real source code take about eight times one copy, where a rule that rescans from the start
    would take ~64 times. Both sizes are timed alternately in this run, cold (no cache), best of five, so
    load on the machine cannot favour one; the speed itself is measured by bench/proxy_overhead.py."""
    one = real_source(125_000) + "\nDB_PASSWORD=hunter2\n"
    texts = {"one": one, "eight": one * 8}
    seconds, counts = dict.fromkeys(texts, float("inf")), {}
    for _ in range(5):
        for name, text in texts.items():
            redact._cache.clear()
            counts[name] = Counter()
            started = time.perf_counter()
            out = redact_text(text, counts[name])
            seconds[name] = min(seconds[name], time.perf_counter() - started)
            assert "hunter2" not in out
    assert counts["eight"] == {kind: 8 * n for kind, n in counts["one"].items()}  # every copy was redacted
    ratio = seconds["eight"] / seconds["one"]
    assert ratio < 24, f"8x the text took {ratio:.1f}x the time"


def test_a_text_seen_before_comes_from_the_cache(monkeypatch):
    """An agent resends its whole history every turn: a megabyte already redacted is not redacted again, and
    its secrets are counted again."""
    text = real_source(1_000_000) + "\nDB_PASSWORD=hunter2\n"
    redact._cache.clear()
    redacted, real = [], redact._redact

    def counted(text: str):
        redacted.append(len(text))
        return real(text)

    monkeypatch.setattr(redact, "_redact", counted)
    first, second = Counter(), Counter()
    assert redact_text(text, first) == redact_text(text, second)
    assert redacted == [len(text)]
    assert first == second and first["env_secret"] >= 1


def test_found_deep_inside_long_text():
    """Names are looked up in a window before the `=`; far into a long text they still are."""
    filler = "def f(x):\n    return x + 1\n" * 400
    counts = Counter()
    out = redact_text(filler + "DB_PASSWORD=hunter2\n" + filler + "key sk-abc123def456ghi789jkl012\n", counts)
    assert "hunter2" not in out and "sk-abc123def456ghi789jkl012" not in out
    assert counts == {"env_secret": 1, "openai_api_key": 1}
    assert redact_text(filler + ORDINARY[0]) == filler + ORDINARY[0]
