"""Where Ray Train meets the loop: the function each Ray Train worker runs, and the Reporter that
hands an evaluation's metrics and checkpoint to `ray.train.report`. The loop itself (loop.py)
runs without Ray (under torchrun for the GPU check, and in fast tests)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ray.train

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.evaluation import Evaluation
from gpt4all_ray.ray_private import quiet_train_report_logger
from gpt4all_ray.train import faults
from gpt4all_ray.train.loop import train


class RayTrainReporter:
    def __init__(self) -> None:
        # Each rank says where it runs: the driver's report bridge gathers every rank's node.
        self.node_id = ray.get_runtime_context().get_node_id()

    def report(self, evaluation: Evaluation, checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(dataclasses.replace(evaluation, node_id=self.node_id).to_metrics(), checkpoint=checkpoint)


def ray_train_loop(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker; after a worker failure Ray Train restarts the group
    and hands every worker the last reported checkpoint. If that one is broken, train() falls
    back to the newest valid checkpoint_* beside it (Ray keeps the best one too); on local or
    mounted storage, that is: as_directory() of remote storage downloads the handed one alone."""
    quiet_train_report_logger()
    cfg = TrialConfig(**config["trial"])
    args = (cfg, RayTrainReporter(), config.get("tb_dir"), config.get("threads", 1))
    data_cache, ds_config = config.get("data_cache"), config.get("ds_config")
    injected = faults.from_environment()  # NoFaults unless a recovery test set GPT4ALL_RAY_FAULT
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        # A restarted group's start is not timed: fit() began before the first attempt.
        worker_group_s = time.time() - config["fit_started_at"] if "fit_started_at" in config else 0.0
        train(
            *args,
            hparams=config.get("hparams"),
            worker_group_s=worker_group_s,
            faults=injected,
            data_cache=data_cache,
            ds_config=ds_config,
        )
        return
    with checkpoint.as_directory() as folder:
        train(*args, resume_from=folder, faults=injected, data_cache=data_cache, ds_config=ds_config)
