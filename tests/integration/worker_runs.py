"""Run the worker loop without Ray (the torchrun seam): real DeepSpeed engines on gloo.

`python tests/integration/worker_runs.py OUT CASES_JSON [RESUME_FROM]` runs each case of CASES_JSON
({name: trial settings}) in turn in this one process (imports and process start paid once), as
one rank of a job whose RANK/WORLD_SIZE/MASTER_* come from the environment. Per case, OUT/<name>/
gets metrics.jsonl (every report), steps_rank<r>.jsonl (every optimizer step: the examples and
loss), checkpoints/step-<n>/ (each report's checkpoint, all ranks merged, as Ray Train merges
them), model/ (the last exported model) or error.txt. A case named planted_* has the weight decay
dropped before the optimizer is built: the hyperparameter check must refuse it.

The tests start ranks with `forked_rank` (conftest.launch_ranks): forked from a process that
imported this module, DeepSpeed, transformers and PEFT once, instead of paying those 7 s of imports
in every rank of every attempt.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.evaluation import Evaluation
from gpt4all_ray.train import faults
from gpt4all_ray.train import loop as worker


class FolderReporter:
    def __init__(self, out: Path) -> None:
        self.out = out

    def report(self, evaluation: Evaluation, checkpoint_dir: str | None) -> None:
        metrics = evaluation.to_metrics()  # as Ray carries it
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0:
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.out / "checkpoints" / f"step-{metrics['step']}", dirs_exist_ok=True)
            if rank == 0 and (Path(checkpoint_dir) / "trial_config.json").is_file():
                shutil.rmtree(self.out / "model", ignore_errors=True)
                shutil.copytree(checkpoint_dir, self.out / "model", ignore=shutil.ignore_patterns("resume"))


def step_logger(out: Path) -> worker.StepHook:
    def on_step(step: int, rank: int, examples: list[int], loss: float) -> None:
        with (out / f"steps_rank{rank}.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "examples": examples, "loss": loss}) + "\n")

    return on_step


def without_weight_decay(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    return [{"name": "decay", "params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]


def main(argv: list[str]) -> int:
    root, cases = Path(argv[0]), json.loads(argv[1])
    resume_from = argv[2] if len(argv) > 2 else None
    real_groups = worker.param_groups
    for name, settings in cases.items():
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        worker.param_groups = without_weight_decay if name.startswith("planted_") else real_groups  # type: ignore[assignment]
        try:
            cfg = TrialConfig(**settings)
            worker.train(
                cfg,
                FolderReporter(out),
                str(out / "tb"),
                resume_from=resume_from,
                on_step=step_logger(out),
                faults=faults.from_environment(),
            )
        except Exception:  # noqa: BLE001 (the test reads what failed, per case)
            (out / "error.txt").write_text(traceback.format_exc())
    return 0


def forked_rank(argv: list[str], env: dict[str, str], log: str) -> None:
    """One rank in a freshly forked process: the environment a launcher would give it, its output to
    `log`; exits with main's code (a fault's SIGKILL ends it as it would a Popen'd rank)."""
    os.environ.clear()
    os.environ.update(env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a SIGKILL loses no line
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    raise SystemExit(main(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
