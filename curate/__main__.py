"""python -m curate TRACES... OUT_DIR: see --help."""

from __future__ import annotations

import argparse
import sys

from core.cli import command_parser

EPILOG = """\
example:
  python -m curate traces/ data/ --seed 1 --split 0.8,0.1,0.1
  python -m curate traces/run1.jsonl traces/run2.jsonl data/ --model ~/.cache/flywheel/tool-calling --max-seq-length 1024

writes OUT_DIR/train.jsonl, valid.jsonl, test.jsonl (mlx-lm chat format: {"messages", "tools", "meta"};
assistant tool calls OpenAI-shaped with arguments as JSON objects; a sample is one assistant turn, and train
and valid hold one line per trajectory, "supervise" naming the turns kept of it: --per-turn writes one line
per sample, for plain `mlx_lm lora`), rejects.jsonl (every rejected or
deduplicated line and sample with its reason and file:line), report.json (the funnel, stage by stage) and
curate.toml (the resolved settings: --config OUT_DIR/curate.toml repeats the run). Splits are by task:
samples of one session, of one task (normalised first user message + tool names) or exact duplicates of
each other share a split, placed by a stable hash of the task and --seed.
Exits 1 with a one-line reason when no usable sample remains; 2 on a missing input or a bad setting;
3 when the files written break in = kept + rejected + deduplicated (the line names the stage).

curate.toml keys are Config's field names (an unknown key or a wrongly typed value is refused), e.g.:
  seed = 1
  split = [0.8, 0.1, 0.1]
  include_final_answers = true
  text_tool_calls = "convert"      # or "reject"
  near_duplicates_keep = 1         # 0 keeps every near duplicate (they still share a split)
  [extra_markers]
  batch_tag = '(?i)\\s*\\[batch \\d+\\]'
"""


def parse_split(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--split takes three comma-separated fractions, e.g. 0.8,0.1,0.1")
    return tuple(parts)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "python -m curate",
        "Turn recorded agent traces into mlx-lm training data: validate, stitch sessions, one sample "
        "per assistant turn, strip synthetic markers, convert text-about-tools, check tool calls, dedupe, split.",
        EPILOG,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="trace files or directories (*.jsonl, recursive), then the output directory",
    )
    parser.add_argument("--config", help="curate.toml with Config settings")
    parser.add_argument(
        "--model", help="model directory: round-trip every sample through its chat template and tool parser"
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        help="with --model: drop samples longer than this many tokens (default 2048)",
    )
    parser.add_argument("--seed", type=int, help="split seed (default 0)")
    parser.add_argument(
        "--require-outcome",
        choices=("success", "failure"),
        help="keep only sessions whose outcome (traces' outcomes.jsonl: task checks, feedback, labels) is this",
    )
    parser.add_argument(
        "--answered-by", help="keep only exchanges answered by this policy (its label, adapter or model)"
    )
    parser.add_argument("--split", type=parse_split, help="train,valid,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument(
        "--keep-failed",
        action="store_true",
        default=None,
        help="keep turns whose tool call was answered by a retry prompt or error",
    )
    parser.add_argument(
        "--keep-http-errors",
        action="store_true",
        default=None,
        help="keep exchanges that ended in an HTTP error",
    )
    parser.add_argument(
        "--no-final-answers", action="store_true", help="make samples only of tool-calling turns"
    )
    parser.add_argument(
        "--per-turn",
        action="store_true",
        help="train/valid: one sample per assistant turn (what plain `mlx_lm lora` trains on) instead of "
        "one per trajectory supervising its kept turns",
    )
    parser.add_argument("--markers-file", help="extra marker regexes, one per line (added to the defaults)")
    parser.add_argument(
        "--workers", type=int, help="pass-1 processes (default: one per core for inputs over 64 MB)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one trace file or directory and an output directory")
    *inputs, out_dir = args.paths
    if args.max_seq_length and not args.model:
        parser.error("--max-seq-length needs --model (token counts come from its tokenizer)")

    from core.config import flag_overrides
    from curate.config import Config, load_config
    from curate.markers import load_markers_file
    from curate.pipeline import run
    from curate.verify import AccountingError

    try:
        config = load_config(
            args.config,
            **flag_overrides(args, Config),
            include_final_answers=False if args.no_final_answers else None,
            sessions=False if args.per_turn else None,
            progress=False if args.quiet else None,
        )
        if args.markers_file:
            extra = {**config.extra_markers, **load_markers_file(args.markers_file)}
            config = config.replace(extra_markers=extra)
        report = run(inputs, out_dir, config)
    except AccountingError as error:
        print(f"curate: {error}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"curate: {error}", file=sys.stderr)
        return 2
    if not args.quiet:
        report.print_summary()
    if reason := report.failure_reason():
        print(f"curate: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
