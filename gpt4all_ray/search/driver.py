"""The Tune driver: one Tuner over Ray Train trials, with the Optuna searcher, the stoppers and
ASHA; it ends by writing the experiment's report. Runs in the process that `gpt4all-ray tune`
(or `python -m gpt4all_ray.tune`) started, attached to a Ray cluster."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from gpt4all_ray.config import SearchSpec
from gpt4all_ray.evaluation import SEARCH_METRIC, TIME_AXIS
from gpt4all_ray.experiment.report import ExperimentReport, build_report
from gpt4all_ray.search.progress import clock


def make_scheduler(spec: SearchSpec, exp_dir: Path | None = None) -> Any:
    """ASHA on the running best validation loss at each evaluation, in epochs (fractional for
    step-level evaluations), writing its stops to the experiment's stop log; None: FIFO, every
    trial runs until it completes or diverges."""
    if spec.tune.scheduler != "asha":
        return None
    from gpt4all_ray.search.stopping import RecordedASHA

    return RecordedASHA(
        exp_dir=exp_dir,
        time_attr=TIME_AXIS,
        max_t=spec.max_epochs,
        grace_period=spec.tune.asha_grace_epochs,  # type: ignore[arg-type]  # rungs in epochs: floats work
        reduction_factor=spec.tune.asha_reduction_factor,
    )


def run(
    spec: SearchSpec, exp_dir: Path, train_rows: int, resume: bool = False, storage: str | None = None
) -> ExperimentReport:
    # The legacy Tune console output honours verbose=0; the new one prints a status box anyway.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from gpt4all_ray.divergence import DivergencePolicy
    from gpt4all_ray.experiment.files import DATA_CACHE, stored_trials, tune_dir, write_starts
    from gpt4all_ray.experiment.storage import mirror, ray_root
    from gpt4all_ray.search.cluster import warn_if_deepspeed_op_unbuilt
    from gpt4all_ray.search.driver_faults import driver_fault_callbacks
    from gpt4all_ray.search.progress import progress_callback
    from gpt4all_ray.search.resume_state import drop_ended, resume_state_callback
    from gpt4all_ray.search.searcher import make_searcher, storage_url
    from gpt4all_ray.search.spaces import param_space, start_points
    from gpt4all_ray.search.stopping import DivergenceStopper, GpuHourBudget
    from gpt4all_ray.search.trial import trial_driver

    t0, exp_dir = time.time(), exp_dir.resolve()  # the stop log's path is pickled with the stoppers
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    warn_if_deepspeed_op_unbuilt(spec.resources)
    root = ray_root(storage, exp_dir.resolve())
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver,
            spec=spec,
            storage=f"{root}/train",
            # With --storage the trials' TensorBoard logs go there too (train/tensorboard.py): a
            # folder on the driver's machine is not one the trials' nodes share.
            tb_root=f"{root}/tensorboard" if storage else str(exp_dir / "tensorboard"),
            data_cache=str(exp_dir / DATA_CACHE),
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
        trackers: list[Any] = []
        if spec.tune.trackers:  # imports mlflow and wandb (a second): only where asked for
            from gpt4all_ray.search.tracking import tracking_callbacks

            trackers = tracking_callbacks(spec, exp_dir)
        # The workers stop a diverging trial themselves; the same policy as a Tune Stopper also
        # stops one whose workers do not (and composes with other stoppers).
        stoppers: list[Any] = [DivergenceStopper(DivergencePolicy.for_trial(spec.fixed), exp_dir)]
        if spec.tune.gpu_hours:
            stoppers.append(GpuHourBudget(spec.tune.gpu_hours, spec.resources.gpus_per_trial, exp_dir))
        starts = start_points(spec, train_rows)
        write_starts(exp_dir, [(start.origin, start.params) for start in starts])
        searcher = make_searcher(spec, exp_dir, SEARCH_METRIC, [start.params for start in starts] or None)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.tune.max_concurrent),
                num_samples=spec.tune.num_trials,
                metric=SEARCH_METRIC,
                mode="min",
                scheduler=make_scheduler(spec, exp_dir),
                time_budget_s=spec.tune.time_budget_s or None,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=root,
                # What each trial writes beside its results (its configs) goes to the storage too.
                sync_config=tune.SyncConfig(sync_artifacts=bool(storage)),
                callbacks=[
                    progress_callback(spec, t0, exp_dir),
                    *([] if spec.tune.keep_resume_state else [resume_state_callback(root)]),
                    *driver_fault_callbacks(),  # tests only
                    *trackers,  # tune.tracking: MLflow, W&B (none by default; TensorBoard always)
                ],
                stop=stoppers[0] if len(stoppers) == 1 else tune.stopper.CombinedStopper(*stoppers),
                # A trial whose driver died with a node drained for preemption is started again and
                # resumes from its last checkpoint: Tune charges that to no budget, so 0 retries
                # here still retry it. Any other error ends the trial (--resume continues it):
                # retrying would also rerun trials whose workers failed past their own budget.
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=0,
            ),
        )
        print(
            f"[{clock(t0)}] searching {spec.tune.num_trials} trials of {spec.name}: "
            f"{spec.resources.workers_per_trial} DeepSpeed workers each, up to {spec.tune.max_concurrent} at once",
            flush=True,
        )
    grid = tuner.fit()
    if storage:  # the report reads Tune's trial folders from a local mirror; TensorBoard beside it
        mirror(root, "tune", tune_dir(exp_dir))
        mirror(root, "tensorboard", exp_dir / "tensorboard")
    if not spec.tune.keep_resume_state:
        # Tune has saved its final state: every trial it saved as ended, in this run or an earlier
        # one of a resumed experiment (not those an interrupted driver left running).
        drop_ended(root)
    report = build_report(exp_dir, storage_url(spec, exp_dir))
    reported = len(stored_trials(exp_dir))
    if reported != len(grid):
        print(f"warning: Tune holds {len(grid)} trials but {reported} are stored", file=sys.stderr)
    print(f"[{clock(t0)}] search finished: {reported} of {spec.tune.num_trials} trials", flush=True)
    print(f"Optuna study:     optuna-dashboard {storage_url(spec, exp_dir)}", flush=True)
    print(f"Summary:          {exp_dir / 'summary.md'} (figures beside it)", flush=True)
    if spec.tune.trackers:
        from gpt4all_ray.search.tracking import where_tracked

        print("\n".join(where_tracked(spec, exp_dir)), flush=True)
    return report
