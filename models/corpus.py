"""Deterministic text for the tiny model: word lists shared with the tool-call samples, and the BPE corpus.

Everything is generated from code and a seed, so the tokenizer (and the cache key that hashes this file)
does not depend on files that differ between machines or Python patch versions.
"""

from __future__ import annotations

import json
import random

DIRECTORIES = [
    "src",
    "tests",
    "docs",
    "scripts",
    "app",
    "lib",
    "config",
    "src/utils",
    "src/api",
    "src/models",
    "tests/unit",
    "notes",
    "data",
    "web/static",
    "tools",
    "examples",
]
STEMS = [
    "main",
    "app",
    "utils",
    "config",
    "server",
    "client",
    "models",
    "views",
    "routes",
    "helpers",
    "parser",
    "cache",
    "settings",
    "cli",
    "schema",
    "report",
    "todo",
    "notes",
    "index",
    "api",
    "auth",
    "db",
    "loader",
    "errors",
    "logger",
    "test_app",
    "test_utils",
    "README",
    "CHANGELOG",
    "setup",
]
EXTENSIONS = [".py", ".md", ".txt", ".json", ".toml", ".yaml", ".js", ".ts", ".cfg", ".sh"]
ROOT_FILES = [
    "README.md",
    "pyproject.toml",
    "setup.py",
    "Makefile",
    "requirements.txt",
    ".gitignore",
    "LICENSE",
]

# (command, possible argument lists); args are what an agent passes as `args`
COMMANDS = [
    ("pytest", [["-q"], ["-x", "-q"], ["tests"], ["-k", "parser"], []]),
    ("ls", [["-la"], ["-l"], []]),
    ("git", [["status"], ["diff"], ["log", "--oneline"], ["branch"]]),
    ("python", [["main.py"], ["-m", "pytest"], ["--version"], ["setup.py", "check"]]),
    ("ruff", [["check", "."], ["format", "."]]),
    ("make", [["test"], ["build"], ["lint"], []]),
    ("npm", [["test"], ["run", "build"], ["install"]]),
    ("cat", [["README.md"], ["setup.py"]]),
    ("wc", [["-l", "main.py"], ["-c", "notes.txt"]]),
    ("echo", [["hello"], ["done"]]),
]

WORD_TEXT = (
    "the a an file files folder directory project code test tests function class method module package "
    "read write list run show open print create update add fix change check find look see tell what is in "
    "of to for with and or please can you me my this that it its all new old line lines text content data "
    "value name path command output error result results build install start stop help use used using "
    "make sure first then after before each every here there some any now again also just only should "
    "would could will need want like into from about over under small large quick short long simple "
    "config settings server client request response user users input output string number list dict "
    "about above across add again against agent almost already always among another answer anything "
    "around ask asked away back because become been begin being below best better between both bring "
    "call called came cannot case cause certain clear close come common complete consider course current "
    "day different does done down during early easy else end enough even example fact far feel few field "
    "final follow form found free full give given good great group hand happen hard have having head "
    "hear high hold home however idea important include inside instead issue keep kind know known last "
    "later least leave left less let level life light little live local lower main many mean might mind "
    "miss more most move much must near never next note nothing number often once open order other our "
    "own part past people place plan point possible present problem process public put question quite "
    "rather real reason record remove report rest return right same save second seem send set several "
    "side since single so something soon sort source space special state step still such support system "
    "take task than their them these thing think those though through time today together too top "
    "toward true try turn type under until upon usually very wait walk way week well were when where "
    "which while who whole why within without word work world year yes yet young "
    "array boolean branch buffer bug byte cache commit compile compiler console database debug default "
    "deploy dependency deprecated directory docker endpoint environment event exception export flag "
    "format framework function handler header import index integer interface iterator json key keyword "
    "lambda library lint logger loop memory merge message migration mock module namespace null object "
    "option package parameter parse patch pipeline plugin pointer port print private property queue "
    "refactor regex release repository request route runtime schema script session shell snapshot socket "
    "stack stream struct subprocess template terminal thread timeout token trace tuple typed unicode "
    "update upload url utility validate variable version virtual warning webhook widget worker yaml"
)
WORDS = WORD_TEXT.split()

PYTHON_NAMES = [
    "load",
    "save",
    "parse",
    "render",
    "fetch",
    "update",
    "compute",
    "validate",
    "main",
    "run",
    "build",
    "merge",
    "split",
    "count",
    "clean",
    "format_row",
    "read_config",
    "write_report",
    "get_user",
    "to_json",
]
PYTHON_ARGS = ["path", "data", "value", "items", "name", "config", "text", "rows", "key", "limit", "user"]

UNICODE_SNIPPETS = [
    "café",
    "naïve",
    "résumé",
    "Zürich",
    "São Paulo",
    "façade",
    "über",
    "niño",
    "日本語",
    "中文",
    "한국어",
    "Привет",
    "Ελληνικά",
    "emoji 🙂 🚀",
    "• bullet",
    "— dash",
    "“quotes”",
    "€ £ ¥",
]

FILE_CONTENTS = [
    "print('hello')\n",
    "def main():\n    return 0\n",
    "# Notes\n\n- buy milk\n- fix the parser\n",
    '{"name": "demo", "version": "1.0"}\n',
    "import os\n\nPATH = os.getcwd()\n",
    "TODO: write tests\n",
    "x = 1\ny = 2\nprint(x + y)\n",
    "[tool.ruff]\nline-length = 100\n",
    "hello world\n",
    "def add(a, b):\n    return a + b\n",
]


def random_path(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(ROOT_FILES)
    return f"{rng.choice(DIRECTORIES)}/{rng.choice(STEMS)}{rng.choice(EXTENSIONS)}"


def random_sentence(rng: random.Random, words: int | None = None) -> str:
    count = words or rng.randint(4, 14)
    text = " ".join(rng.choice(WORDS) for _ in range(count))
    return text[0].upper() + text[1:] + rng.choice([".", ".", "?", "!"])


def python_snippet(rng: random.Random) -> str:
    name = rng.choice(PYTHON_NAMES)
    args = rng.sample(PYTHON_ARGS, rng.randint(0, 3))
    arg_text = ", ".join(args)
    first = args[0] if args else "None"
    body = rng.choice(
        [
            f"    return {first}\n",
            f"    if {first} is None:\n        raise ValueError('missing {first}')\n    return {first}\n",
            f"    result = []\n    for item in {first}:\n        result.append(item)\n    return result\n",
            f"    with open({first}) as handle:\n        return handle.read()\n",
            f'    print(f"{name}: {{{first}}}")\n',
            f"    return {{'{name}': {first}, 'count': len({first})}}\n",
        ]
    )
    header = rng.choice(["", "import os\n\n", "import json\n\n", "from pathlib import Path\n\n"])
    doc = f'    """{random_sentence(rng, 6)}"""\n' if rng.random() < 0.5 else ""
    return f"{header}def {name}({arg_text}):\n{doc}{body}"


def tool_call_snippet(rng: random.Random) -> str:
    kind = rng.randrange(4)
    path = random_path(rng)
    if kind == 0:
        call = {"name": "read_file", "arguments": {"path": path}}
    elif kind == 1:
        call = {"name": "write_file", "arguments": {"path": path, "content": rng.choice(FILE_CONTENTS)}}
    elif kind == 2:
        call = {"name": "list_files", "arguments": {"path": rng.choice(DIRECTORIES + ["."])}}
    else:
        command, arg_lists = rng.choice(COMMANDS)
        call = {"name": "run_command", "arguments": {"command": command, "args": rng.choice(arg_lists)}}
    return json.dumps(call, ensure_ascii=False)


def bpe_corpus(seed: int = 0, lines: int = 6000) -> list[str]:
    """English-ish requests, paths, Python, JSON tool calls and some non-ASCII text, one document per item."""
    rng = random.Random(seed)
    documents = []
    for index in range(lines):
        kind = index % 7
        if kind == 0:
            documents.append(random_sentence(rng))
        elif kind == 1:
            verb = rng.choice(["Read", "Open", "Show me", "List", "Run", "Write", "Create", "Check"])
            documents.append(f"{verb} {random_path(rng)} and {random_sentence(rng, 5).lower()}")
        elif kind == 2:
            documents.append(python_snippet(rng))
        elif kind == 3:
            documents.append(f"\n{tool_call_snippet(rng)}\n")
        elif kind == 4:
            command, arg_lists = rng.choice(COMMANDS)
            documents.append(" ".join([command, *rng.choice(arg_lists)]) + "\n" + random_path(rng))
        elif kind == 5:
            documents.append(rng.choice(FILE_CONTENTS) + rng.choice(UNICODE_SNIPPETS))
        else:
            documents.append(
                "read_file(path)\nwrite_file(path, content)\nlist_files(path)\nrun_command(command, args, cwd?)\n"
            )
    return documents
