"""`python -m gpt4all_ray.tune`: run a hyperparameter search described by a search-space YAML.

Validates the YAML before anything heavy is imported or started, attaches to a Ray cluster
(RAY_ADDRESS, as under `ray job submit`, or a running `ray start`) or starts a local one, runs
Ray Tune + Optuna over Ray Train DeepSpeed trials, and writes results/<experiment>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gpt4all_ray.config import SearchSpec, SpecError, load_spec, read_space, with_overrides
from gpt4all_ray.data import load_split
from gpt4all_ray.data.pipeline import DataReport
from gpt4all_ray.data.sources import DataError
from gpt4all_ray.experiment import SETTINGS, SPACE_COPY
from gpt4all_ray.plan import Assumptions
from gpt4all_ray.progress import clock, short

DEFAULT_SPACE = "search_spaces/tiny_cpu.yaml"
ASSUMED = Assumptions()  # the dry run's cost assumptions unless its flags say otherwise
METRIC = "best_val_loss"  # running best: Ray's OptunaSearch tells Optuna the LAST reported value


def default_space_path() -> Path:
    here = Path(DEFAULT_SPACE)
    return here if here.is_file() else Path(__file__).resolve().parent.parent / DEFAULT_SPACE


def resolve_space(given: Path | None) -> Path:
    """A path, or the name of a file in search_spaces/ (`--space tiny_cpu`)."""
    if given is None:
        return default_space_path()
    if given.suffix or given.exists():
        return given
    return default_space_path().parent / f"{given}.yaml"


def check_data(spec: SearchSpec) -> DataReport:
    """Build the rows and split the workers will build (pure Python, fast) and refuse data that
    makes no optimizer step, before Ray starts. The report says what was kept and dropped."""
    try:
        data = load_split(spec.fixed)
    except DataError as err:
        raise SpecError(f"{spec.path}: fixed.{getattr(err, 'key', 'data')}: {err}") from None
    if data.report.train_rows < spec.fixed.global_batch:
        raise SpecError(
            f"{spec.path}: fixed.data_rows: {data.report.train_rows} training rows after cleaning and the "
            f"validation split make no step of global_batch {spec.fixed.global_batch} ({data.report.summary()})"
        )
    if spec.fixed.length_policy in ("raise", "drop"):  # otherwise only the workers would find out
        from gpt4all_ray.data.encode import TooLong, encode_rows
        from gpt4all_ray.model import load_tokenizer

        tokenizer = load_tokenizer(spec.fixed, data)
        for part, rows in (("train", data.train), ("validation", data.val)):
            try:
                kept, _ = encode_rows(rows, tokenizer, spec.fixed.max_length, spec.fixed.length_policy)
            except TooLong as err:
                raise SpecError(f"{spec.path}: fixed.length_policy: {part} {err}") from None
            need = spec.fixed.global_batch if part == "train" else 1
            if len(kept) < need:
                raise SpecError(
                    f"{spec.path}: fixed.length_policy: drop leaves {len(kept)} of {len(rows)} {part} rows "
                    f"within max_length {spec.fixed.max_length} (needed: {need}); raise max_length or truncate"
                )
    check_warmup(spec, data.report.train_rows)
    return data.report


def check_warmup(spec: SearchSpec, train_rows: int) -> None:
    """A warmup no trial can finish is a mistake in the space (GPT4All's warmup was 100 of
    thousands of steps)."""
    steps_per_epoch = train_rows // spec.fixed.global_batch
    warmup = spec.search.get("warmup_steps")
    lowest_warmup = int(min(warmup.args)) if warmup else spec.fixed.warmup_steps
    longest_run = steps_per_epoch * spec.max_epochs
    if lowest_warmup >= longest_run:
        key = "search.warmup_steps" if warmup else "fixed.warmup_steps"
        raise SpecError(
            f"{spec.path}: {key}: warmup of {lowest_warmup} steps is not shorter than the longest run "
            f"({spec.max_epochs} epochs x {steps_per_epoch} steps = {longest_run}); no trial would finish warming up"
        )


def check_results_dir(exp_dir: Path) -> None:
    """The experiment folder can be written: refused before Ray starts otherwise."""
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SpecError(f"--results-dir: cannot write the experiment folder {exp_dir}: {err.strerror or err}") from None


def check_model(spec: SearchSpec) -> None:
    """A Hugging Face model must resolve (local folder, cache or Hub) before Ray starts, and LoRA
    must know which modules to adapt."""
    from gpt4all_ray.model import is_builtin, lora_targets

    cfg = spec.fixed
    if is_builtin(cfg):
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(
            f"{spec.path}: fixed.model: {cfg.model!r} is not a built-in model, a local model folder, or a "
            f"Hugging Face model this machine can load ({first})"
        ) from None
    if cfg.method == "lora":
        try:
            lora_targets(cfg, config.model_type)
        except ValueError as err:
            raise SpecError(f"{spec.path}: fixed.{err}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpt4all_ray.tune", description=__doc__.splitlines()[0])
    p.add_argument(
        "--space",
        type=Path,
        default=None,
        help=f"search-space YAML, or a name in search_spaces/ (default {DEFAULT_SPACE})",
    )
    p.add_argument("--name", help="experiment name (default: <space name>-<date>-<time>)")
    p.add_argument("--results-dir", type=Path, help="where results/<experiment>/ goes (default results)")
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
    args.results_dir = args.results_dir or Path("results")
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


def make_scheduler(spec: SearchSpec, exp_dir: Path | None = None) -> Any:
    """ASHA on the running best validation loss at each evaluation, in epochs (fractional for
    step-level evaluations), writing its stops to the experiment's stop log; None: FIFO, every
    trial runs until it completes or diverges."""
    if spec.tune.scheduler != "asha":
        return None
    from gpt4all_ray.stopping import RecordedASHA

    return RecordedASHA(
        exp_dir=exp_dir,
        time_attr="epoch_progress",
        max_t=spec.max_epochs,
        grace_period=spec.tune.asha_grace_epochs,  # type: ignore[arg-type]  # rungs in epochs: floats work
        reduction_factor=spec.tune.asha_reduction_factor,
    )


def run(
    spec: SearchSpec, exp_dir: Path, train_rows: int, resume: bool = False, storage: str | None = None
) -> dict[str, Any] | None:
    # The legacy Tune console output honours verbose=0; the new one prints a status box anyway.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from gpt4all_ray.divergence import DivergencePolicy
    from gpt4all_ray.driver_faults import driver_fault_callbacks
    from gpt4all_ray.experiment import stored_trials, tune_dir, write_starts
    from gpt4all_ray.progress import progress_callback
    from gpt4all_ray.ray_cluster import warn_if_deepspeed_op_unbuilt
    from gpt4all_ray.report import build_report
    from gpt4all_ray.searcher import make_searcher, storage_url
    from gpt4all_ray.spaces import param_space, start_points
    from gpt4all_ray.stopping import DivergenceStopper, GpuHourBudget
    from gpt4all_ray.storage import mirror_tune, ray_root
    from gpt4all_ray.trial import trial_driver

    t0, exp_dir = time.time(), exp_dir.resolve()  # the stop log's path is pickled with the stoppers
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    warn_if_deepspeed_op_unbuilt(spec.resources)
    root = ray_root(storage, exp_dir.resolve())
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver, spec=spec, storage=f"{root}/train", tb_root=str(exp_dir.resolve() / "tensorboard")
        ),
        {"CPU": spec.resources.driver_cpus},
    )
    if resume:
        # Tune restores its trials, the searcher (with the Optuna study) and the stopper from the
        # experiment state; an unfinished trial restarts its TorchTrainer under the same name,
        # which Ray Train resumes from the trial's last checkpoint.
        tuner = tune.Tuner.restore(f"{root}/tune", trainable, resume_unfinished=True, resume_errored=True)
        print(f"[{clock(t0)}] resuming {spec.name} from {root}/tune", flush=True)
    else:
        # The workers stop a diverging trial themselves; the same policy as a Tune Stopper also
        # stops one whose workers do not (and composes with other stoppers).
        stoppers: list[Any] = [DivergenceStopper(DivergencePolicy.for_trial(spec.fixed), exp_dir)]
        if spec.tune.gpu_hours:
            stoppers.append(GpuHourBudget(spec.tune.gpu_hours, spec.resources.gpus_per_trial, exp_dir))
        starts = start_points(spec, train_rows)
        write_starts(exp_dir, [(start.origin, start.params) for start in starts])
        searcher = make_searcher(spec, exp_dir, METRIC, [start.params for start in starts] or None)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.tune.max_concurrent),
                num_samples=spec.tune.num_trials,
                metric=METRIC,
                mode="min",
                scheduler=make_scheduler(spec, exp_dir),
                time_budget_s=spec.tune.time_budget_s or None,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=root,
                # What each trial writes beside its results (its configs) goes to the storage too.
                sync_config=tune.SyncConfig(sync_artifacts=bool(storage)),
                callbacks=[progress_callback(spec, t0, exp_dir), *driver_fault_callbacks()],  # the latter: tests only
                stop=stoppers[0] if len(stoppers) == 1 else tune.stopper.CombinedStopper(*stoppers),
                verbose=0,
            ),
        )
        print(
            f"[{clock(t0)}] searching {spec.tune.num_trials} trials of {spec.name}: "
            f"{spec.resources.workers_per_trial} DeepSpeed workers each, up to {spec.tune.max_concurrent} at once",
            flush=True,
        )
    grid = tuner.fit()
    if storage:  # the report reads Tune's trial folders from a local mirror
        mirror_tune(root, tune_dir(exp_dir))
    best = build_report(exp_dir, storage_url(spec, exp_dir))
    reported = len(stored_trials(exp_dir))
    if reported != len(grid):
        print(f"warning: Tune holds {len(grid)} trials but {reported} are stored", file=sys.stderr)
    print(f"[{clock(t0)}] search finished: {reported} of {spec.tune.num_trials} trials", flush=True)
    print(f"Optuna study:     optuna-dashboard {storage_url(spec, exp_dir)}", flush=True)
    print(f"Summary:          {exp_dir / 'summary.md'} (figures beside it)", flush=True)
    return best


def dry_run(args: argparse.Namespace) -> int:
    """The plan, from the YAML alone (data that cannot be read here is replaced by stated
    assumptions); no Ray, no model download."""
    from gpt4all_ray.plan import count_train_tokens, make_plan

    try:
        spec = load_spec(resolve_space(args.space), args.overrides)
        given = {"cluster_gpus": args.cluster_gpus, "mfu": args.mfu, "usd_per_gpu_hour": args.usd_per_gpu_hour}
        assume = dataclasses.replace(ASSUMED, **{k: v for k, v in given.items() if v is not None})
        if args.num_trials is not None:
            spec = with_num_trials(spec, args.num_trials)
        counted = count_train_tokens(spec) if spec.resources.gpus_per_worker else None
        plan = make_plan(spec, assume, *(counted or (None, None)))
    except (SpecError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(plan.lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    try:
        spec, exp_dir = experiment_spec(args)
        check_model(spec)
        data_report = check_data(spec)
        print(f"Data: {data_report.summary()}", flush=True)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    exp_dir = exp_dir.resolve()
    made_here = not exp_dir.exists()
    try:
        check_results_dir(exp_dir)
        storage = settings_storage(exp_dir) if args.resume else args.storage
        if storage:
            from gpt4all_ray.storage import check_storage

            check_storage(storage)
        from gpt4all_ray.ray_cluster import connect_ray

        connect_ray(spec.resources)
    except SpecError as err:
        if made_here and exp_dir.is_dir() and not any(exp_dir.iterdir()):
            exp_dir.rmdir()  # nothing half-written left behind
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Experiment {exp_dir.name}: results in {exp_dir}", flush=True)
    if not args.resume:
        (exp_dir / SPACE_COPY).write_text(space_as_run(spec.path, args.overrides))
        settings = {
            "space": str(spec.path),
            "overrides": args.overrides,
            "num_trials": spec.tune.num_trials,
            "storage": args.storage,
        }
        (exp_dir / SETTINGS).write_text(json.dumps(settings))
    if not args.results_dir.is_absolute() and "runtime_resources" in Path.cwd().parts:
        print(
            "note: this runs in Ray's copy of the job's working directory; pass --results-dir with an "
            "absolute path to keep the results where you can find them",
            flush=True,
        )
    try:
        best = run(spec, exp_dir, data_report.train_rows, resume=bool(args.resume), storage=storage)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((exp_dir / "leaderboard.md").read_text(), end="")
    if best is None:
        print("No trial produced a checkpoint.", file=sys.stderr)
        return 1
    loss = best["best_val_loss"]
    print(
        f"\nBest trial {best['trial_id']}: val_loss {loss:.4f} (perplexity {math.exp(loss):.2f}) "
        f"at epoch {best['best_epoch']} of {best['epochs_run']} run; {short(best['params'])}"
    )
    print(f"Leaderboard:      {exp_dir / 'leaderboard.md'} (and .csv)")
    print(f"Best config:      {exp_dir / 'best.json'}")
    print(f"Best checkpoint:  {exp_dir / 'best'} (Hugging Face format)")
    print(f"TensorBoard:      tensorboard --logdir {exp_dir / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
