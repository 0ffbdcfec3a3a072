"""What the report and its plots call each metric, in display order."""

from __future__ import annotations

RATE_LABELS = {  # the headline first (what --fail-under gates), over-calling next to it (what gates refuse)
    "exact_call_accuracy": "Exact-call accuracy",
    "over_call_rate": "Over-calling (a call where none is right)",
    "parsed_call_rate": "Parsed-call rate",
    "name_accuracy": "Name accuracy",
    "schema_valid_rate": "Schema-valid rate",
    "abstention_accuracy": "Abstention accuracy",
    "turn_success_rate": "Turn success",
}
# Which turns each rate is over (`core.turns`): those with a reference call, those answered without one, all.
RATE_TURNS = {key: "call" for key in RATE_LABELS} | {
    "over_call_rate": "answer",
    "abstention_accuracy": "answer",
    "turn_success_rate": "",
}
AGENT_LABELS = {
    "success_rate": "Agent task success",
    "mean_tool_calls": "Tool calls / episode",
    "mean_invalid_calls": "Invalid calls / episode",
    "mean_retries": "Retries / episode",
    "mean_steps": "Steps / episode",
    "mean_wall_s": "Wall time / episode (s)",
}
# the general check's headline rates (evaluate.general): exact calls where a call is right, over-calling where none is
GENERAL_HEADLINE = (
    ("exact_call_accuracy", "Exact-call accuracy"),
    ("over_call_rate", "Over-calling (no call is right)"),
)
