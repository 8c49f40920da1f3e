"""`gpt4all-ray tune` (or `python -m gpt4all_ray.tune`): run a hyperparameter search described by a
search-space YAML.

Validates the YAML before anything heavy is imported or started, attaches to a Ray cluster
(RAY_ADDRESS, as under `ray job submit`, or a running `ray start`) or starts a local one, runs
Ray Tune + Optuna over Ray Train DeepSpeed trials, and writes runs/<experiment>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gpt4all_ray.cli.preflight import check_data, check_deepspeed, check_model, check_results_dir, check_tracking
from gpt4all_ray.config import SearchSpec, SpecError, load_spec, read_space, with_overrides
from gpt4all_ray.experiment.files import DATA_CACHE, FORMAT, PROMPT_PLACEHOLDER, SETTINGS, SPACE_COPY
from gpt4all_ray.experiment.model_card import CARD

if TYPE_CHECKING:
    from gpt4all_ray.data.cache import PreparedData
    from gpt4all_ray.experiment.report import ExperimentReport
from gpt4all_ray.search.plan import Assumptions
from gpt4all_ray.search.progress import short

DEFAULT_SPACE = "search_spaces/tiny_cpu.yaml"
DEFAULT_RESULTS = "runs"  # a user's runs; results/ in the repository holds the reference reports
ASSUMED = Assumptions()  # the dry run's cost assumptions unless its flags say otherwise


def default_space_path() -> Path:
    here = Path(DEFAULT_SPACE)
    return here if here.is_file() else Path(__file__).resolve().parents[2] / DEFAULT_SPACE


def resolve_space(given: Path | None) -> Path:
    """A path, or the name of a file in search_spaces/ (`--space tiny_cpu`)."""
    if given is None:
        return default_space_path()
    if given.suffix or given.exists():
        return given
    return default_space_path().parent / f"{given}.yaml"


class HelpSpace(argparse.Action):
    """--help-space: like --help, it answers and exits before any other flag is checked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from gpt4all_ray.config.reference import reference_markdown

        print(reference_markdown(), end="")
        parser.exit()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpt4all-ray tune", description=__doc__.splitlines()[0])
    p.add_argument(
        "--space",
        type=Path,
        default=None,
        help=f"search-space YAML, or a name in search_spaces/ (default {DEFAULT_SPACE})",
    )
    p.add_argument(
        "--help-space",
        action=HelpSpace,
        help="print the search-space reference (every key, its default and meaning; docs/configuration.md) and exit",
    )
    p.add_argument("--name", help="experiment name (default: <space name>-<date>-<time>)")
    p.add_argument("--results-dir", type=Path, help=f"where <experiment>/ goes (default {DEFAULT_RESULTS})")
    p.add_argument("--num-trials", type=int, help="override tune.num_trials of the space")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting of the space's fixed, resources or tune section (repeatable), "
        "e.g. --set tune.searcher=gp --set tune.scheduler=asha",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and cost estimate; start nothing")
    p.add_argument("--cluster-gpus", type=int, help=f"dry run: GPUs in the cluster (default {ASSUMED.cluster_gpus})")
    p.add_argument("--mfu", type=float, help=f"dry run: assumed model FLOPs utilisation (default {ASSUMED.mfu})")
    p.add_argument(
        "--usd-per-gpu-hour", type=float, help=f"dry run: price of a GPU-hour (default {ASSUMED.usd_per_gpu_hour})"
    )
    p.add_argument(
        "--storage",
        metavar="URI",
        help="where Ray keeps trial folders and checkpoints, if not in the experiment folder: a URI every node "
        "reaches (s3://, gs://, hdfs://, file://); the report and best/ still go to --results-dir",
    )
    p.add_argument(
        "--resume",
        metavar="EXPERIMENT",
        help="continue a stopped or killed experiment: its folder, or its name under --results-dir",
    )
    args = p.parse_args(argv)
    refuse_unused_flags(args)
    args.results_dir = args.results_dir or Path(DEFAULT_RESULTS)
    return args


# A flag that does nothing in a mode is refused there, naming it (never silently ignored).
DRY_RUN_ONLY = ("cluster_gpus", "mfu", "usd_per_gpu_hour")
NOT_IN_DRY_RUN = ("name", "results_dir", "storage", "resume")  # a dry run starts and writes nothing
NOT_WITH_RESUME = ("space", "name", "num_trials")  # a resumed experiment keeps what it was started with


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def refuse_unused_flags(args: argparse.Namespace) -> None:
    """Exits 2 (argparse's way) naming a flag the chosen mode would ignore."""
    # `is`: a flag given as 0 (--mfu 0) is given, though 0 == False
    given = {dest for dest, value in vars(args).items() if value is not None and value is not False and value != []}
    if args.dry_run:
        unused = [(d, "a --dry-run starts and writes nothing") for d in NOT_IN_DRY_RUN if d in given]
    else:
        unused = [(d, "only --dry-run uses it, for the plan's cost estimate") for d in DRY_RUN_ONLY if d in given]
    if args.resume:
        unused += [
            (d, "a resumed experiment runs the space and trials it was started with (its space.yaml)")
            for d in NOT_WITH_RESUME
            if d in given
        ]
    if unused:
        dest, why = unused[0]
        print(f"error: {flag(dest)}: {why}; leave {flag(dest)} out", file=sys.stderr)
        raise SystemExit(2)


def space_as_run(path: Path, overrides: list[str]) -> str:
    """The space's YAML for the experiment's record and --resume: the file itself, or, with --set,
    the file's settings with the overrides applied (its comments are not kept)."""
    if not overrides:
        return path.read_text()
    header = f"# {path} with --set {' --set '.join(overrides)}\n"
    return header + yaml.safe_dump(with_overrides(read_space(path), overrides), sort_keys=False)


def settings_storage(exp_dir: Path) -> str | None:
    return json.loads((exp_dir / SETTINGS).read_text()).get("storage")


def experiment_spec(args: argparse.Namespace) -> tuple[SearchSpec, Path]:
    """The spec and folder of a new experiment, or of the one --resume names."""
    if args.resume:
        exp_dir = Path(args.resume) if Path(args.resume).is_dir() else args.results_dir / args.resume
        if not (exp_dir / SPACE_COPY).is_file() or not (exp_dir / SETTINGS).is_file():
            raise SpecError(f"--resume: {exp_dir} holds no experiment to resume ({SPACE_COPY} or {SETTINGS} missing)")
        spec = load_spec(exp_dir / SPACE_COPY)
        settings = json.loads((exp_dir / SETTINGS).read_text())
        if settings.get("format") != FORMAT:
            raise SpecError(
                f"--resume: {exp_dir} was started by an earlier gpt4all-ray (experiment.json format "
                f"{settings.get('format', 1)}, this one reads {FORMAT}): its saved Tune state names modules that have "
                "moved; resume it with the version that started it"
            )
        if not settings.get("storage") and not (exp_dir / "ray" / "tune").is_dir():
            raise SpecError(f"--resume: {exp_dir} holds no experiment to resume (ray/tune/ missing)")
        if args.overrides:
            raise SpecError(f"--set: a resumed experiment keeps its space ({exp_dir / SPACE_COPY}); leave --set out")
        if args.storage and args.storage != settings.get("storage"):
            kept = settings.get("storage") or f"{exp_dir / 'ray'}"
            raise SpecError(f"--storage: a resumed experiment keeps its storage ({kept}); leave --storage out")
        return dataclasses.replace(
            spec, tune=dataclasses.replace(spec.tune, num_trials=settings["num_trials"])
        ), exp_dir
    spec = load_spec(resolve_space(args.space), args.overrides)
    if args.num_trials is not None:
        spec = with_num_trials(spec, args.num_trials)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = args.results_dir / name
    if exp_dir.exists() and any(exp_dir.iterdir()):
        raise SpecError(
            f"--name: experiment {exp_dir} exists; continue it with --resume {name} or choose another --name"
        )
    return spec, exp_dir


def with_num_trials(spec: SearchSpec, num_trials: int) -> SearchSpec:
    if num_trials < 1:
        raise SpecError(f"--num-trials: must be > 0, got {num_trials}")
    return dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, num_trials=num_trials))


def dry_run(args: argparse.Namespace) -> int:
    """The plan, from the YAML alone (data that cannot be read here is replaced by stated
    assumptions); no Ray, no model download."""
    from gpt4all_ray.search.plan import count_train_tokens, make_plan

    try:
        spec = load_spec(resolve_space(args.space), args.overrides)
        given = {"cluster_gpus": args.cluster_gpus, "mfu": args.mfu, "usd_per_gpu_hour": args.usd_per_gpu_hour}
        assume = dataclasses.replace(ASSUMED, **{k: v for k, v in given.items() if v is not None})
        if args.num_trials is not None:
            spec = with_num_trials(spec, args.num_trials)
        check_deepspeed(spec)
        counted = count_train_tokens(spec) if spec.resources.gpus_per_worker else None
        plan = make_plan(spec, assume, *(counted or (None, None)))
    except (SpecError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(plan.lines))
    return 0


@dataclass(frozen=True)
class Finished:
    """A search that ran: its experiment folder and what its report found."""

    exp_dir: Path
    report: ExperimentReport


def run_experiment(args: argparse.Namespace) -> Finished:
    """Check everything that can be checked before Ray starts, attach to Ray, run the search and
    write its report; SpecError (naming the file, key or flag) before any worker starts."""
    spec, exp_dir = experiment_spec(args)
    check_model(spec)
    check_deepspeed(spec)
    check_tracking(spec)
    exp_dir = exp_dir.resolve()
    made_here = not exp_dir.exists()
    try:
        check_results_dir(exp_dir)
        data = check_data(spec, exp_dir / DATA_CACHE)
        built = f"built in {data.folder}" if data.built_here else f"mapped from {data.folder}"
        print(f"Data: {data.report.summary()}; tokenized once, {built}", flush=True)
        storage = settings_storage(exp_dir) if args.resume else args.storage
        if storage:
            from gpt4all_ray.experiment.storage import check_storage

            check_storage(storage)
        from gpt4all_ray.search.cluster import connect_ray

        connect_ray(spec.resources)
    except SpecError:
        if made_here:
            shutil.rmtree(exp_dir, ignore_errors=True)  # nothing half-written left behind
        raise
    print(f"Experiment {exp_dir.name}: results in {exp_dir}", flush=True)
    if not args.resume:
        (exp_dir / SPACE_COPY).write_text(space_as_run(spec.path, args.overrides))
        settings = {
            "space": str(spec.path),
            "overrides": args.overrides,
            "num_trials": spec.tune.num_trials,
            "storage": args.storage,
            "format": FORMAT,
            "data": data_record(data),  # for the model card: the report cannot rebuild it
        }
        (exp_dir / SETTINGS).write_text(json.dumps(settings))
    if not args.results_dir.is_absolute() and "runtime_resources" in Path.cwd().parts:
        print(
            "note: this runs in Ray's copy of the job's working directory; pass --results-dir with an "
            "absolute path to keep the results where you can find them",
            flush=True,
        )
    from gpt4all_ray.search.driver import run

    return Finished(exp_dir, run(spec, exp_dir, data.report.train_rows, resume=bool(args.resume), storage=storage))


def data_record(data: PreparedData) -> dict[str, Any]:
    """What experiment.json keeps of the data the search read: rows per split, and the template of
    prompt_format gpt4all (its model card states them; the report cannot rebuild them)."""
    from gpt4all_ray.data.encode import prompt_text

    report = data.report
    return {
        "train_rows": report.train_rows,
        "val_rows": report.val_rows,
        "summary": report.summary(),
        "gpt4all_template": prompt_text(PROMPT_PLACEHOLDER),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    try:
        finished = run_experiment(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    exp_dir, best = finished.exp_dir, finished.report.best
    print((exp_dir / "leaderboard.md").read_text(), end="")
    if best is None:
        print("No trial produced a checkpoint.", file=sys.stderr)
        return 1
    record = best.record
    print(
        f"\nBest trial {record.trial_id}: val_loss {record.best_val_loss:.4f} "
        f"(perplexity {math.exp(record.best_val_loss):.2f}) at epoch {record.best_epoch} of {record.epochs_run} run; "
        f"{short(record.params)}"
    )
    print(f"Leaderboard:      {exp_dir / 'leaderboard.md'} (and .csv)")
    print(f"Best config:      {exp_dir / 'best.json'}")
    print(f"Best checkpoint:  {best.checkpoint} (Hugging Face format)")
    if (card := best.checkpoint / CARD).is_file():
        print(f"Model card:       {card}")
    print(f"TensorBoard:      tensorboard --logdir {exp_dir / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
