"""The reference agent's tool contract: the four tools it offers a model, with their JSON schemas, and its
system prompt. The agent (`agent.episodes`) advertises exactly these schemas; the scripted teacher answers in
terms of them; the tiny tool-calling test model (`models.tiny`) is trained on them.
"""

from __future__ import annotations

AGENT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a text file in the project and return its contents.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the project."}
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Create or overwrite a text file in the project.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the project."},
                    "content": {"type": "string", "description": "The complete new file contents."},
                },
                "required": ["path", "content"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "list_files",
            "description": "List the files and folders in a project directory.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Directory relative to the project."}
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_command",
            "description": "Run a program (no shell) and return its exit code and output.",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The program to run, e.g. pytest."},
                    "args": {"type": "array", "items": {"type": "string"}, "description": "Its arguments."},
                    "cwd": {"type": "string", "description": "Working directory relative to the project."},
                },
                "required": ["command", "args"],
            },
        },
    },
]

SYSTEM_PROMPT = "You are a coding agent. Use the tools."
