"""The Python API, for notebooks and scripts: the same search as `gpt4all-ray tune`, returning
its results as objects instead of printing them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all_ray.cli.tune import parse_args, run_experiment
from gpt4all_ray.experiment.records import TrialRecord


@dataclass(frozen=True)
class SearchResult:
    experiment_dir: Path
    """<results_dir>/<experiment>: leaderboard.md/.csv, best.json, best/, summary.md, tensorboard/."""
    leaderboard: list[TrialRecord]
    """Every trial, best first (the rows of leaderboard.csv)."""
    best: TrialRecord | None
    """The trial the search picked (tune.min_stop_rate respected where some trial met it)."""
    best_config: dict[str, Any] | None
    """The best trial's full configuration: every fixed and sampled setting."""
    best_checkpoint: Path | None
    """<experiment>/best: the best trial's best checkpoint, in Hugging Face format."""


def run_search(
    space: str | Path | None = None,
    overrides: Sequence[str] = (),
    results_dir: str | Path = "runs",
    resume: str | Path | None = None,
    name: str | None = None,
    storage: str | None = None,
) -> SearchResult:
    """Run a search: `space` is a search-space YAML or a name in search_spaces/ (None: the
    embedded default); `overrides` are "SECTION.KEY=VALUE" strings, as --set takes them. With
    `resume` (an experiment folder, or its name under results_dir), continue that experiment
    instead: it keeps its own space. Bad input raises ValueError (SpecError) before Ray starts."""
    if resume is not None and (space is not None or name is not None):
        raise ValueError("run_search: a resumed experiment keeps its space and name; leave space and name out")
    argv = ["--results-dir", str(results_dir)]
    argv += ["--resume", str(resume)] if resume is not None else []
    argv += ["--space", str(space)] if space is not None else []
    argv += ["--name", name] if name is not None else []
    argv += ["--storage", storage] if storage is not None else []
    for override in overrides:
        argv += ["--set", override]
    finished = run_experiment(parse_args(argv))
    best = finished.report.best
    return SearchResult(
        experiment_dir=finished.exp_dir,
        leaderboard=finished.report.leaderboard,
        best=best.record if best else None,
        best_config=best.config if best else None,
        best_checkpoint=best.checkpoint if best else None,
    )
