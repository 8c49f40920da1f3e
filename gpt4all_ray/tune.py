"""`python -m gpt4all_ray.tune`: run a hyperparameter search described by a search-space YAML.

Validates the YAML before anything heavy is imported or started, attaches to a Ray cluster
(RAY_ADDRESS, as under `ray job submit`, or a running `ray start`) or starts a local one, runs
Ray Tune + Optuna over Ray Train DeepSpeed trials, and writes results/<experiment>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from gpt4all_ray.config import SearchSpec, SpecError, load_spec
from gpt4all_ray.data import load_split
from gpt4all_ray.data.sources import DataError
from gpt4all_ray.progress import clock, short

DEFAULT_SPACE = "search_spaces/tiny_cpu.yaml"
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


def check_data(spec: SearchSpec) -> str:
    """Build the rows and split the workers will build (pure Python, fast) and refuse data that
    makes no optimizer step, before Ray starts."""
    try:
        data = load_split(spec.fixed)
    except DataError as err:
        raise SpecError(f"{spec.path}: fixed.data: {err}") from None
    if data.report.train_rows < spec.fixed.global_batch:
        raise SpecError(
            f"{spec.path}: fixed.data_rows: {data.report.train_rows} training rows after cleaning and the "
            f"validation split make no step of global_batch {spec.fixed.global_batch}"
        )
    if spec.fixed.length_policy == "raise":  # otherwise only the workers would find the row
        from gpt4all_ray.data.encode import TooLong, encode_rows
        from gpt4all_ray.model import load_tokenizer

        tokenizer = load_tokenizer(spec.fixed, data)
        for part, rows in (("train", data.train), ("validation", data.val)):
            try:
                encode_rows(rows, tokenizer, spec.fixed.max_length, "raise")
            except TooLong as err:
                raise SpecError(f"{spec.path}: fixed.length_policy: {part} {err}") from None
    return data.report.summary()


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
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="where results/<experiment>/ goes")
    p.add_argument("--num-trials", type=int, help="override tune.num_trials of the space")
    return p.parse_args(argv)


def run(spec: SearchSpec, exp_dir: Path) -> dict[str, Any] | None:
    # The legacy Tune console output honours verbose=0; the new one prints a status box anyway.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from gpt4all_ray.divergence import DivergencePolicy
    from gpt4all_ray.progress import progress_callback
    from gpt4all_ray.ray_cluster import connect_ray, warn_if_deepspeed_op_unbuilt
    from gpt4all_ray.results import record_from_history, write_report
    from gpt4all_ray.searcher import make_searcher, storage_url
    from gpt4all_ray.spaces import param_space, warm_starts
    from gpt4all_ray.stopping import DivergenceStopper
    from gpt4all_ray.trial import trial_driver

    t0 = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    connect_ray(spec.resources)
    warn_if_deepspeed_op_unbuilt(spec.resources)
    storage = exp_dir.resolve() / "ray"
    optuna_search = make_searcher(spec, exp_dir, METRIC, warm_starts(spec) or None)
    fixed = spec.fixed
    # The workers stop a diverging trial themselves; the same policy as a Tune Stopper also
    # stops one whose workers do not (and composes with other stoppers).
    stopper = DivergenceStopper(DivergencePolicy(fixed.grace_epochs, fixed.min_delta, fixed.patience, fixed.smoothing))
    progress = progress_callback(spec, t0)
    trainable = tune.with_parameters(
        trial_driver, spec=spec, storage=str(storage / "train"), tb_root=str(exp_dir.resolve() / "tensorboard")
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": spec.resources.driver_cpus}),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(optuna_search, max_concurrent=spec.tune.max_concurrent),
            num_samples=spec.tune.num_trials,
            metric=METRIC,
            mode="min",
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(storage), callbacks=[progress], stop=stopper, verbose=0
        ),
    )
    print(
        f"[{clock(t0)}] searching {spec.tune.num_trials} trials of {spec.name}: "
        f"{spec.resources.workers_per_trial} DeepSpeed workers each, up to {spec.tune.max_concurrent} at once",
        flush=True,
    )
    grid = tuner.fit()

    searcher_values = _optuna_values(optuna_search)
    records, configs = [], {}
    for trial_id, params in progress.params.items():  # every trial Tune started, in start order
        history = progress.history.get(trial_id, [])
        record = record_from_history(trial_id, params, history, trial_id in progress.errors)
        record.searcher_value = searcher_values.get(trial_id)
        records.append(record)
        configs[trial_id] = dataclasses.asdict(spec.trial_config(params))
    if len(records) != len(grid):
        print(f"warning: Tune holds {len(grid)} trials but {len(records)} were seen starting", file=sys.stderr)
    best = write_report(exp_dir, records, list(spec.search), configs)
    print(f"[{clock(t0)}] search finished: {len(records)} of {spec.tune.num_trials} trials reported", flush=True)
    print(f"Optuna study:     optuna-dashboard {storage_url(spec, exp_dir)}", flush=True)
    return best


def _optuna_values(search: Any) -> dict[str, float | None]:
    study = search._ot_study  # Ray keeps the study private; read-only use here
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    out: dict[str, float | None] = {}
    for trial_id, ot_trial in search._ot_trials.items():
        t = frozen.get(ot_trial.number)
        out[trial_id] = t.value if t is not None else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(resolve_space(args.space))
        if args.num_trials is not None:
            if args.num_trials < 1:
                raise SpecError(f"--num-trials: must be > 0, got {args.num_trials}")
            spec = dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, num_trials=args.num_trials))
        check_model(spec)
        print(f"Data: {check_data(spec)}", flush=True)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = (args.results_dir / name).resolve()
    print(f"Experiment {name}: results in {exp_dir}", flush=True)
    if not args.results_dir.is_absolute() and "runtime_resources" in Path.cwd().parts:
        print(
            "note: this runs in Ray's copy of the job's working directory; pass --results-dir with an "
            "absolute path to keep the results where you can find them",
            flush=True,
        )
    try:
        best = run(spec, exp_dir)
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
