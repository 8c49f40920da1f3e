"""Checks run before Ray starts: the data makes steps, the model resolves, the warmup ends, the
results folder can be written. Each failure is a SpecError naming the file and key."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

from gpt4all_ray.config import MLFLOW_URI_EXPECTED, SearchSpec, SpecError, TrialConfig, mlflow_uri_ok
from gpt4all_ray.data.cache import PreparedData
from gpt4all_ray.data.sources import DataError


def check_data(spec: SearchSpec, cache: Path) -> PreparedData:
    """Build the experiment's tokenized data once, in `cache` (every trial then maps it), and
    refuse data that makes no optimizer step, before Ray starts; a searched max_length builds and
    checks each of its choices. The report of the fixed one (the first choice) says what was kept
    and dropped."""
    lengths = spec.search["max_length"].args if "max_length" in spec.search else (spec.fixed.max_length,)
    built = [_checked_build(spec, dataclasses.replace(spec.fixed, max_length=length), cache) for length in lengths]
    check_warmup(spec, built[0].report.train_rows)
    return built[0]


def _checked_build(spec: SearchSpec, cfg: TrialConfig, cache: Path) -> PreparedData:
    from gpt4all_ray.data.cache import prepare
    from gpt4all_ray.data.encode import FormatError, NoRoom, TooLong

    try:
        data = prepare(cfg, cache)
    except DataError as err:
        raise SpecError(f"{spec.path}: fixed.{getattr(err, 'key', 'data')}: {err}") from None
    except TooLong as err:
        raise SpecError(f"{spec.path}: fixed.length_policy: {err}") from None  # names the part and row
    except FormatError as err:
        raise SpecError(f"{spec.path}: fixed.prompt_format: {err}") from None  # names the part and row
    except NoRoom as err:
        raise SpecError(
            f"{spec.path}: {'search' if 'max_length' in spec.search else 'fixed'}.max_length: {err}"
        ) from None
    if data.report.train_rows < cfg.global_batch:
        raise SpecError(
            f"{spec.path}: fixed.data_rows: {data.report.train_rows} training rows after cleaning and the "
            f"validation split make no step of global_batch {cfg.global_batch} ({data.report.summary()})"
        )
    for part, kept, rows, need in (
        ("train", len(data.train), data.report.train_rows, cfg.global_batch),
        ("validation", len(data.val), data.report.val_rows, 1),
    ):
        if kept < need:
            raise SpecError(
                f"{spec.path}: fixed.length_policy: drop leaves {kept} of {rows} {part} rows "
                f"within max_length {cfg.max_length} (needed: {need}); raise max_length or truncate"
            )
    return data


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


def check_deepspeed(spec: SearchSpec) -> None:
    """fixed.deepspeed's file (read by load_spec): no key the search samples, and nothing the space
    decides set to another value, before Ray starts. Each trial's driver merges it again with its
    own sampled values."""
    from gpt4all_ray.train.ds_config import DeepSpeedConflict, decided_keys, deepspeed_config

    user, cfg = spec.deepspeed_user, spec.fixed
    if user is None:
        return
    where = f"{spec.path}: fixed.deepspeed"
    for key in decided_keys(user, {}):
        searched = [name for name in key.settings if name in spec.search]
        if searched:
            dist = spec.search[searched[0]]
            raise SpecError(
                f"{where}: {cfg.deepspeed}: sets {key.path} = {json.dumps(key.theirs)}, but the search samples "
                f"{searched[0]} (search.{searched[0]}: {dist.kind} {list(dist.args)}); remove it from the file"
            )
    try:
        deepspeed_config(cfg, spec.resources.workers_per_trial, user)
    except DeepSpeedConflict as err:
        raise SpecError(f"{where}: {err}") from None


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
    """A Hugging Face model must resolve (local folder, cache or Hub) before Ray starts, LoRA
    must know which modules to adapt, and prompt_format chat_template needs its tokenizer's template."""
    from gpt4all_ray.train.model import is_builtin, lora_targets

    cfg = spec.fixed
    if is_builtin(cfg):
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            cfg.model, trust_remote_code=cfg.trust_remote_code, cache_dir=cfg.hf_cache or None
        )
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
    if cfg.prompt_format == "chat_template":
        from gpt4all_ray.data.encode import NoChatTemplate, row_encoder
        from gpt4all_ray.data.tokenizer import load_tokenizer

        try:
            row_encoder(load_tokenizer(cfg, None), cfg.max_length, cfg.prompt_format)
        except NoChatTemplate as err:
            raise SpecError(f"{spec.path}: fixed.prompt_format: model {cfg.model}: {err}") from None


TRACKER_MODULES = {"mlflow": "mlflow", "wandb": "wandb"}
"""tune.tracking's trackers -> the module each needs (the extra of the tracker's name installs it)."""


def check_tracking(spec: SearchSpec) -> None:
    """Each tracker tune.tracking names has its package installed here, in the driver where its
    callback runs (refused before Ray starts otherwise, with the install command), and an MLflow
    store taken from the environment is one MLflow 3 writes to."""
    for tracker in sorted(spec.tune.trackers):
        if importlib.util.find_spec(TRACKER_MODULES[tracker]) is None:
            raise SpecError(
                f"{spec.path}: tune.tracking: {tracker} is not installed where the search runs; "
                f"pip install 'gpt4all-ray[{tracker}]' (or leave {tracker} out of tune.tracking)"
            )
    variable = os.environ.get("MLFLOW_TRACKING_URI", "")
    if (
        "mlflow" in spec.tune.trackers
        and not spec.tune.mlflow_tracking_uri
        and variable
        and not mlflow_uri_ok(variable)
    ):
        raise SpecError(
            f"MLFLOW_TRACKING_URI={variable} (used as tune.mlflow_tracking_uri is empty): {MLFLOW_URI_EXPECTED}"
        )
