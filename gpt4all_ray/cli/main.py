"""`gpt4all-ray`: one command, a subcommand per job. Each subcommand is its module's own main()
(the same flags as `python -m <module>`), imported only when it runs."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "tune": ("gpt4all_ray.cli.tune", "run a hyperparameter search (also: python -m gpt4all_ray.tune)"),
    "report": ("gpt4all_ray.experiment.report", "rebuild an experiment's leaderboard, summary and figures"),
    "evaluate": ("gpt4all_ray.inspection.evaluate", "validation loss of a saved checkpoint"),
    "analyze": ("gpt4all_ray.inspection.analyze", "per-example losses, probes and maps of a checkpoint"),
    "data": ("gpt4all_ray.data.__main__", "check, clean and preview instruction data"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gpt4all-ray COMMAND [ARGS]  (gpt4all-ray COMMAND --help for its flags)", "", "commands:"]
    return "\n".join(lines + [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as done:  # argparse's --help and usage errors
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)


if __name__ == "__main__":
    sys.exit(main())
