"""One Tune trial: a Ray Train TorchTrainer whose workers run the DeepSpeed loop."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from gpt4all_ray.config import SearchSpec
from gpt4all_ray.evaluation import CHECKPOINT_SCORE, WORKER_NODES, Evaluation
from gpt4all_ray.experiment.durable_reports import Restart, RestartCause, save_report, save_restart
from gpt4all_ray.ray_private import failure_decisions, first_worker_error
from gpt4all_ray.train.ds_config import deepspeed_config
from gpt4all_ray.train.ray_entry import ray_train_loop


class DurableReportCallback(TuneReportCallback):
    """Tune's bridge from Ray Train (rank 0's metrics, every rank's node and the checkpoint's path),
    writing each report to the trial's folder in the storage first (durable_reports.py)."""

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        evaluation = Evaluation.from_result(metrics[0])  # rank 0's
        if evaluation is not None:
            nodes = [(Evaluation.from_result(m) or evaluation).node_id for m in metrics]
            evaluation = dataclasses.replace(evaluation, worker_nodes=nodes)
            save_report(self.run_dir, evaluation, checkpoint.path if checkpoint else None)
            metrics = [metrics[0] | {WORKER_NODES: ",".join(nodes)}, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


def restart_recorder(run_dir: str, trial_id: str) -> Any:
    """Ray Train's failure decisions for this trial, each written to restarts/ and said once."""

    def record(error: Exception, preempted: bool, restarted: bool) -> None:
        restart = Restart.of(*first_worker_error(error), preempted=preempted, restarted=restarted)
        budget = "tune.preemption_restarts" if restart.cause is RestartCause.PREEMPTION else "tune.worker_restarts"
        then = "restarts its workers from the last checkpoint" if restarted else f"ends the trial: {budget} is spent"
        ranks = ", ".join(map(str, restart.ranks)) or "?"
        print(
            f"trial {trial_id}: rank(s) {ranks} failed ({restart.cause.value}: {restart.error[:200]}); "
            f"Ray Train {then}",
            flush=True,
        )
        try:
            save_restart(run_dir, restart)
        except OSError as err:  # a storage hiccup must not turn a recoverable failure into an error
            print(f"warning: trial {trial_id}: could not record its restart in {run_dir}: {err}", flush=True)

    return failure_decisions(record)


def trial_driver(config: dict[str, Any], *, spec: SearchSpec, storage: str, tb_root: str, data_cache: str) -> None:
    """The Tune trainable. Train V2 runs the workers; DurableReportCallback forwards rank 0's
    reports (and each checkpoint's path) to Tune."""
    context = tune.get_context()
    trial_id = context.get_trial_id()
    run_dir = f"{storage}/{trial_id}"
    res = spec.resources
    trial = spec.trial_config(config)
    # What this trial runs, beside its Tune results: the full config and the DeepSpeed config.
    trial_dir = Path(context.get_trial_dir())
    (trial_dir / "trial_config.json").write_text(json.dumps(dataclasses.asdict(trial), indent=2))
    ds_config = deepspeed_config(trial, res.workers_per_trial, spec.deepspeed_user)
    (trial_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    (trial_dir / "trial_resources.json").write_text(json.dumps(dataclasses.asdict(res), indent=2))
    per_worker = {"CPU": res.cpus_per_worker} | ({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={
            "trial": dataclasses.asdict(trial),
            "hparams": {k: config[k] for k in spec.search},
            "tb_dir": f"{tb_root}/{trial_id}",
            "data_cache": data_cache,
            "ds_config": ds_config,  # what the workers run: the file was read once, before Ray started
            "threads": max(1, int(res.cpus_per_worker)),
            # So the workers can tell how long Ray Train took to start them.
            "fit_started_at": time.time(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker=per_worker,
            accelerator_type=res.accelerator_type or None,
        ),
        # Train V2 is what runs (Ray 2.60's default); Ray's type hints still describe V1's RunConfig.
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]
            name=trial_id,
            storage_path=storage,
            callbacks=[DurableReportCallback(run_dir), restart_recorder(run_dir, trial_id)],  # type: ignore[list-item]
            # Every evaluation reports a resumable checkpoint; Ray keeps the best by val_loss (the
            # one holding the exported model) and, always, the latest (to resume from).
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_SCORE, checkpoint_score_order="min"
            ),
            # A dead worker: Ray Train restarts the group, which resumes from the last checkpoint.
            # A worker lost with a node drained for preemption (a spot reclaim) is charged to a
            # budget of its own, so preemptions do not use up the one meant for OOMs and bugs.
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]
                max_failures=spec.tune.worker_restarts, max_preemption_failures=spec.tune.preemption_restarts
            ),
            # Ray Train's per-report INFO lines repeat what the progress lines already say.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    before = _checkpoint_names(run_dir)
    result = trainer.fit()
    if result.checkpoint is not None and Path(result.checkpoint.path).name in before:
        # Nothing was reported in this attempt: the run had ended at the checkpoint it resumed
        # from (the driver was killed after the trial's last report, before Tune recorded the
        # trial finished). Tune gets that last report again instead of a result without metrics.
        tune.report({**(result.metrics or {}), CHECKPOINT_PATH_KEY: result.checkpoint.path})


def _checkpoint_names(run_dir: str) -> set[str]:
    """The checkpoint folders a Ray Train run already holds (a local path or a storage URI)."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    folders = (info for info in listing if info.type == pyarrow.fs.FileType.Directory)
    return {info.base_name for info in folders if info.base_name.startswith("checkpoint_")}
