"""Search-space YAML -> typed, validated config. No torch or Ray import here.

Everything a user can get wrong in a YAML is caught in this module, before Ray starts, with an
error that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

SCHEDULES = ("constant_with_warmup", "linear", "cosine")
METHODS = ("full", "lora")
PRECISIONS = ("fp32", "bf16", "fp16")
LENGTH_POLICIES = ("truncate", "drop", "raise")
COLLATIONS = ("longest", "max_length", "pack")
PROMPT_FORMATS = ("gpt4all", "chat_template")
SEARCHERS = ("tpe", "gp", "random")
TRACKERS = ("mlflow", "wandb")  # the optional extras of the same names (pyproject.toml)
WANDB_PROJECT_BANNED = "/\\#?%:"  # characters W&B refuses in a project name
EMBEDDED_MODELS = ("tiny-gptj", "tiny-gptj-wide", "tiny-llama")
HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "EleutherAI/gpt-j-6b" or "gpt2"
EMBEDDED_DATA = "embedded"
HUB_PREFIX = "hf:"  # data: hf:<name> is a Hugging Face `datasets` name
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
# Settings that change what a trial is (model, data) stay fixed per search; the batch geometry
# may be searched at a fixed global batch (per_device_batch then sets gradient accumulation).
SEARCHABLE = (
    "learning_rate",
    "lr_schedule",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "epochs",
    "grad_clip",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "per_device_batch",
    "max_length",
)


def source_set(csv_names: str) -> frozenset[str]:
    return frozenset(n.strip() for n in csv_names.split(",") if n.strip())


MLFLOW_URI_EXPECTED = (
    "expected a tracking URI: sqlite:////<absolute path>.db, postgresql://..., http(s)://<server> or databricks "
    "(MLflow 3 keeps a file: store in maintenance; a relative SQLite path depends on where the driver runs)"
)


def mlflow_uri_ok(uri: str) -> bool:
    relative_sqlite = uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")
    return (uri == "databricks" or "://" in uri) and not uri.startswith("file:") and not relative_sqlite


class SpecError(ValueError):
    """A search-space file that cannot be run; the message names the file and key."""


@dataclass(frozen=True)
class Rule:
    """What one setting's value must be: every section's values are checked the same way, by the
    rule its field carries (fixed values, searched bounds and choices, enqueued points alike)."""

    ok: Callable[[Any], bool]
    expected: str
    choices: tuple[Any, ...] = ()
    """The values the reference lists: all accepted ones, or (model) the built-in ones."""

    def problem(self, value: Any) -> str | None:
        return None if self.ok(value) else f"{self.expected}, got {value!r}"


def one_of(choices: tuple[Any, ...], expected: str = "") -> Rule:
    return Rule(lambda v: v in choices, expected or f"expected one of {', '.join(map(str, choices))}", choices)


def at_least(low: float, meaning: str = "") -> Rule:
    return Rule(lambda v: v >= low, f"must be >= {low}" + (f" ({meaning})" if meaning else ""))


POSITIVE = Rule(lambda v: v > 0, "must be > 0")
MODEL_NAME = Rule(
    lambda v: v in EMBEDDED_MODELS or Path(v).is_dir() or bool(HUB_MODEL_ID.match(v)),
    f"expected one of {', '.join(EMBEDDED_MODELS)}, a local model folder, or a Hugging Face model name",
    EMBEDDED_MODELS,  # the built-in ones; any Hugging Face causal LM too
)
DATA_SOURCE = Rule(
    lambda v: v == EMBEDDED_DATA or v.startswith(HUB_PREFIX) or Path(v).exists(),
    f"expected {EMBEDDED_DATA!r}, an existing path, or {HUB_PREFIX}<Hugging Face dataset name>",
)

# The concerns a trial's settings fall into (the configuration reference has a table for each).
MODEL, DATA, OPTIMIZER, ENGINE, EVALUATION, STOPPING, PROBES = (
    "model",
    "data",
    "optimizer",
    "engine",
    "evaluation",
    "stopping",
    "probes",
)
GROUPS = (MODEL, DATA, OPTIMIZER, ENGINE, EVALUATION, STOPPING, PROBES)


def setting(default: Any, group: str = "", rule: Rule | None = None) -> Any:
    """A config field: its default, its concern (TrialConfig's fields) and the rule its value keeps."""
    return field(default=default, metadata={"group": group, "rule": rule})


def rule_of(cls: type, key: str) -> Rule | None:
    return next((f.metadata.get("rule") for f in fields(cls) if f.name == key), None)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial's workers need: the fixed settings plus the sampled ones. The YAML's
    `fixed:` and `search:` keys are these fields, flat; each belongs to one group (its concern).
    """

    # model: the model and how it is adapted
    model: str = setting("tiny-gptj", MODEL, MODEL_NAME)
    """Built-in tiny model (tiny-gptj, tiny-gptj-wide, tiny-llama, built from a config in-process), or
    any Hugging Face causal LM by local folder or Hub name (its own tokenizer then)."""
    trust_remote_code: bool = setting(False, MODEL)
    """Run a Hub model's own Python code (off unless asked)."""
    hf_cache: str = setting(
        "", MODEL, Rule(lambda v: v == "" or Path(v).is_absolute(), "expected an absolute path every node sees")
    )
    """Where a Hub model is downloaded to and read from (from_pretrained's cache_dir); empty:
    Hugging Face's default (HF_HOME, else ~/.cache/huggingface on each node). On a cluster, a folder
    every node mounts, so a node the autoscaler adds reads the model instead of downloading it
    again (the cluster files set HF_HOME to /mnt/shared/huggingface for the same reason)."""
    method: str = setting("full", MODEL, one_of(METHODS))
    """full fine-tuning or lora (PEFT)."""
    lora_targets: str = setting("", MODEL)
    """Comma-separated module names LoRA adapts (empty: the architecture's entry in model.py)."""
    lora_r: int = setting(8, MODEL, POSITIVE)
    """LoRA rank (method: lora only)."""
    lora_alpha: int = setting(32, MODEL, POSITIVE)
    """LoRA scaling numerator: updates are scaled by lora_alpha / lora_r (method: lora only)."""
    lora_dropout: float = setting(0.1, MODEL, Rule(lambda v: 0 <= v < 1, "expected a fraction in [0, 1)"))
    """Dropout on the LoRA adapter's input, a fraction in [0, 1) (method: lora only)."""
    gradient_checkpointing: bool = setting(False, MODEL)
    """Recompute activations in the backward pass: less memory, ~1/3 more compute."""

    # data: rows, cleaning, split, tokenizing, batching
    data: str = setting(EMBEDDED_DATA, DATA, DATA_SOURCE)
    """Instruction data: `embedded` generates GPT4All-style rows in-process; otherwise a JSONL,
    JSON, CSV or Parquet file, or a folder of them (visible to every worker), or
    `hf:<name>` for the train split of a Hugging Face data set (needs the Hub)."""
    prompt_column: str = setting("prompt", DATA)
    """Column holding the prompt (instruction) in a data file."""
    response_column: str = setting("response", DATA)
    """Column holding the response the model learns to give."""
    source_column: str = setting("source", DATA)
    """Column naming the row's source (for the source filters and per-source counts); where a
    row has none, its file's name stands in."""
    input_column: str = setting("", DATA)
    """Joined to the prompt with a newline when non-empty (Alpaca/GPTeacher `input`)."""
    explode_column: str = setting("", DATA)
    """A list-of-objects column whose items become rows (self-instruct's `instances`)."""
    messages_column: str = setting("messages", DATA)
    """Column holding a conversation: a list of {role, content} turns (system, user, assistant)
    ending with an assistant turn. A row that has it is a conversation (every assistant turn is
    learned); one that has not is a prompt/response pair."""
    prompt_format: str = setting("gpt4all", DATA, one_of(PROMPT_FORMATS))
    """How a row is laid out for the model: gpt4all (`### Prompt:` / `### Response:`, EOS after each
    answer) or chat_template (the tokenizer's own chat template, as an instruct model was trained;
    the model's tokenizer must carry one). The loss is on the answers only."""
    include_sources: str = setting("", DATA)
    """Comma-separated sources to keep (empty: all)."""
    exclude_sources: str = setting("", DATA)
    """Comma-separated sources to drop (GPT4All dropped P3)."""
    train_only_sources: str = setting("", DATA)
    """Comma-separated sources never held out for validation."""
    data_rows: int = setting(2400, DATA, POSITIVE)
    """Rows the embedded generator makes."""
    data_seed: int = setting(0, DATA)
    """Seed of the embedded data set (same seed, byte-identical rows)."""
    val_fraction: float = setting(0.05, DATA, Rule(lambda v: 0 < v < 1, "expected a fraction between 0 and 1"))
    """Share of rows held out for validation (GPT4All: 5%)."""
    max_length: int = setting(128, DATA, POSITIVE)
    """Tokens per example; prompts are capped at half of it."""
    length_policy: str = setting("truncate", DATA, one_of(LENGTH_POLICIES))
    """A row that still does not fit: truncate (and no EOS), drop (counted) or raise."""
    collate: str = setting("longest", DATA, one_of(COLLATIONS))
    """Pad each batch to its longest row, every row to max_length (GPT4All's), or pack a batch's
    examples into rows of max_length with per-example positions and attention."""

    # optimizer: AdamW, its schedule and the run's length
    learning_rate: float = setting(1e-3, OPTIMIZER, POSITIVE)
    """Peak learning rate of AdamW, reached at the end of warmup."""
    lr_schedule: str = setting("linear", OPTIMIZER, one_of(SCHEDULES))
    """After warmup: constant_with_warmup (hold), linear (to 0 at the last step) or cosine (to 0)."""
    warmup_steps: int = setting(10, OPTIMIZER, at_least(0))
    """Optimizer steps of linear warmup up to learning_rate (0: none)."""
    warmup_ratio: float = setting(0.0, OPTIMIZER, Rule(lambda v: 0 <= v < 1, "expected a fraction in [0, 1)"))
    """Warmup as a share of the trial's optimizer steps (epochs x steps an epoch), instead of
    warmup_steps (set one of the two; with this one, warmup_steps is 0)."""
    weight_decay: float = setting(0.0, OPTIMIZER, at_least(0))
    """AdamW weight decay, on weight matrices only (not biases or norms); 0: none."""
    epochs: int = setting(3, OPTIMIZER, POSITIVE)
    """Passes over the training split (a trial may stop earlier)."""
    grad_clip: float = setting(1.0, OPTIMIZER, at_least(0, "0 turns clipping off"))
    """Largest global gradient norm; gradients above it are scaled down to it (0: no clipping)."""
    seed: int = setting(0, OPTIMIZER)
    """Seed of model initialisation and data order."""

    # engine: DeepSpeed and the batch geometry
    per_device_batch: int = setting(8, ENGINE, POSITIVE)
    """Examples per worker in one micro-batch (one forward and backward pass)."""
    global_batch: int = setting(16, ENGINE, POSITIVE)
    """Examples per optimizer step, over all workers: per_device_batch x workers_per_trial x
    gradient accumulation steps (must be a multiple of the first two)."""
    zero_stage: int = setting(2, ENGINE, one_of((0, 1, 2, 3), "expected a ZeRO stage 0, 1, 2 or 3"))
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer state partitioned), 2 (and
    gradients) or 3 (and parameters)."""
    precision: str = setting("fp32", ENGINE, one_of(PRECISIONS))
    """fp32, bf16, or fp16 with dynamic loss scaling (GPU only)."""
    offload_optimizer: bool = setting(False, ENGINE)
    """ZeRO 1-3: optimizer state and step on the CPU."""
    offload_params: bool = setting(False, ENGINE)
    """ZeRO 3 only: parameters kept on the CPU between uses."""
    deepspeed: str = setting("", ENGINE, Rule(lambda v: v == "" or Path(v).is_file(), "expected a DeepSpeed JSON file"))
    """Your own DeepSpeed config (JSON), read once before Ray starts and merged over the generated
    one: bucket sizes, overlap_comm, NVMe offload paths, fp16's loss-scale window, ... A key the
    space decides (batch sizes, gradient_clipping, zero_optimization.stage, bf16/fp16.enabled,
    offload devices, optimizer, scheduler) set to another value ("auto": the space's), a setting
    of a feature the space turns off, and DeepSpeed's old aliases are refused. The merged config
    is what every worker runs and what is saved beside each trial."""
    peak_tflops: float = setting(0.0, ENGINE, at_least(0, "0: the GPU's known peak"))
    """Peak FLOP/s per device (in TFLOP/s) for model FLOPs utilisation; 0: the known peak of the
    GPU (A100, H100, H200) at the training precision, none on CPU."""

    # evaluation: when to log and evaluate
    log_every_steps: int = setting(10, EVALUATION, POSITIVE)
    """Optimizer steps between training-metric logs (loss, learning rate, grad norm, tokens/s,
    MFU) to TensorBoard."""
    eval_every_steps: int = setting(0, EVALUATION, at_least(0, "0: evaluate at epoch ends only"))
    """Also evaluate (and checkpoint for resume) every N optimizer steps; 0: at epoch ends only."""

    # stopping: the divergence rule
    stop_on_divergence: bool = setting(True, STOPPING)
    """Stop a trial whose validation loss rises (false: every trial runs all its epochs, as a
    baseline; NaN or inf still stops it)."""
    grace_epochs: int = setting(1, STOPPING, at_least(1))
    """Epochs before a rise in validation loss counts as divergence."""
    min_delta: float = setting(0.0, STOPPING, at_least(0))
    """Relative rise over the best loss that counts (0.01 = 1%)."""
    patience: int = setting(1, STOPPING, at_least(1))
    """Evaluations in a row above the best that stop the trial."""
    smoothing: float = setting(0.0, STOPPING, Rule(lambda v: 0 <= v < 1, "expected a weight in [0, 1)"))
    """Weight of the past in an exponential moving average of the validation loss (for
    step-level evaluations; 0: each evaluation judged as it is)."""

    # probes: generation probes at each new best
    probe_prompts: int = setting(32, PROBES, at_least(0, "0: no generation probes"))
    """Validation prompts answered greedily at each new best checkpoint (0: no probes): stop
    rate, answer length, repetition, exact match (gpt4all_ray.train.probes)."""
    probe_max_new_tokens: int = setting(64, PROBES, POSITIVE)
    """The answer length at which a probe counts as not stopped."""
    probe_each_epoch: bool = setting(False, PROBES)
    """Also probe at every epoch end (TensorBoard probe/*), not only new bests."""
    exact_answer_sources: str = setting("", PROBES)
    """Comma-separated sources whose responses are the one right answer, for exact match (empty:
    the embedded data's families but creative; none for other data)."""

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps of a run of `total_steps` optimizer steps (the space sets one of the two)."""
        return self.warmup_steps + round(self.warmup_ratio * total_steps)


@dataclass(frozen=True)
class Resources:
    """`resources:` what Ray reserves for each trial."""

    workers_per_trial: int = setting(2, rule=POSITIVE)
    """DeepSpeed worker processes (Ray Train workers) per trial."""
    cpus_per_worker: float = setting(0.5, rule=POSITIVE)
    """CPUs Ray reserves for each worker (fractions allowed)."""
    gpus_per_worker: float = setting(0.0, rule=at_least(0))
    """GPUs Ray reserves for each worker; 0: train on CPU."""
    driver_cpus: float = setting(0.5, rule=POSITIVE)
    """CPUs of the Tune trial that drives one TorchTrainer."""
    accelerator_type: str = setting("")
    """The GPU each worker needs, as Ray names it (A100-80G, A100-40G, H100, ...): workers run only
    on nodes that offer the resource accelerator_type:<it> (cluster/*.yaml declare it per node
    type); empty: any GPU."""

    @property
    def gpus_per_trial(self) -> float:
        return self.gpus_per_worker * self.workers_per_trial


@dataclass(frozen=True)
class TuneSettings:
    """`tune:` the search itself: how many trials, which searcher, what stops them."""

    num_trials: int = setting(6, rule=POSITIVE)
    """Trials to run (sampled, enqueued and warm starts together)."""
    max_concurrent: int = setting(1, rule=POSITIVE)
    """Trials running at once, at most (fewer if the cluster has no room)."""
    seed: int = setting(0)
    """Seed of the searcher's sampler (the same seed draws the same first trials)."""
    min_stop_rate: float = setting(0.0, rule=Rule(lambda v: 0 <= v <= 1, "expected a share in [0, 1]"))
    """A constraint: the best trial is the lowest validation loss among trials whose best
    checkpoint stops (emits EOS) on at least this share of probe prompts; the searcher is told it too."""
    searcher: str = setting("tpe", rule=one_of(SEARCHERS))
    """tpe (Optuna's TPE), gp (Optuna's Gaussian-process sampler: slower to ask, fewer trials to a
    good loss on smooth spaces) or random (Optuna's random sampler: the baseline in benchmarks/)."""
    startup_trials: int = setting(3, rule=at_least(1))
    """Random trials before TPE or GP models the results (Optuna's default of 10 would make a
    small budget pure random search)."""
    worker_restarts: int = setting(2, rule=at_least(0))
    """Times Ray Train restarts a trial's workers after a failure (out of memory, a bug, a node lost
    without notice), from its last checkpoint."""
    preemption_restarts: int = setting(10, rule=at_least(0))
    """Times Ray Train restarts a trial's workers from its last checkpoint after losing a node to
    preemption (a node drained first: a spot reclaim, a deleted pod), apart from worker_restarts."""
    warm_start: str = setting("", rule=one_of(("", "training_log"), "expected training_log (or leave it out)"))
    """training_log: enqueue GPT4All's logged configurations (mapped into the space) first."""
    scale_lr_by_batch: bool = setting(False)
    """Scale each warm start's learning rate by sqrt(k), k = our global batch / its batch."""
    scheduler: str = setting("", rule=one_of(("", "asha"), "expected asha (or leave it out)"))
    """asha: successive halving on the reported evaluations (set fixed.eval_every_steps for
    step-level rungs), beside the divergence stopper; empty: every trial runs its epochs."""
    asha_grace_epochs: float = setting(1.0, rule=POSITIVE)
    """Epochs every trial gets before ASHA may stop it."""
    asha_reduction_factor: int = setting(3, rule=at_least(2))
    """ASHA keeps 1 in this many trials at each rung (at least 2)."""
    time_budget_s: float = setting(0.0, rule=at_least(0, "0: no limit"))
    """Stop starting and running trials after this many seconds (0: no limit)."""
    gpu_hours: float = setting(0.0, rule=at_least(0, "0: no limit"))
    """Stop the search when its trials have used this many GPU-hours (0: no limit)."""
    keep_resume_state: bool = setting(False)
    """Keep a finished trial's resume state (DeepSpeed engine, optimizer, RNG: for a full GPT-J-6B
    about 85 GB a checkpoint). Off: when a trial ends, its checkpoints keep the exported model
    only; a trial that failed keeps everything, for --resume."""
    optuna_storage: str = setting("")
    """Where the Optuna study lives: an RDB URL (postgresql://...); empty: SQLite in the
    experiment folder."""
    tracking: str = setting(
        "",
        rule=Rule(
            lambda v: source_set(v) <= set(TRACKERS),
            f"expected {' or '.join(TRACKERS)}, or both comma-separated (or leave it out)",
            ("", *TRACKERS),
        ),
    )
    """Also track every trial in MLflow, Weights & Biases or both (`mlflow,wandb`), through Ray
    Tune's logger callbacks: one run per trial, named after it and grouped under the experiment's
    name, with its sampled hyperparameters, each evaluation's metrics (val_loss, train_loss,
    best_val_loss, lr, tokens_per_s, ...) and, when it ends, its stop reason and best epoch.
    TensorBoard logs are written either way. Needs the extra: pip install 'gpt4all-ray[mlflow]'
    (or [wandb]); MLflow's UI (`mlflow ui`) needs the full mlflow package. The callbacks run in the
    Tune driver (with `ray job submit`, on the head node)."""
    mlflow_tracking_uri: str = setting("", rule=Rule(lambda v: v == "" or mlflow_uri_ok(v), MLFLOW_URI_EXPECTED))
    """Where MLflow keeps the runs (tracking: mlflow): a tracking server (`http://host:5000`) or a
    database (`sqlite:////abs/path/mlflow.db`, `postgresql://...`). Empty: the MLFLOW_TRACKING_URI
    environment variable of the driver, else SQLite in the experiment folder (mlflow.db, on the
    driver's machine: the head node under `ray job submit`). This setting wins over the variable."""
    wandb_project: str = setting(
        "",
        rule=Rule(
            lambda v: not set(v) & set(WANDB_PROJECT_BANNED),
            "expected a W&B project name (none of / \\ # ? % :)",
        ),
    )
    """The W&B project of the runs (tracking: wandb; empty: the driver's WANDB_PROJECT, else
    gpt4all-ray); the group is the experiment's name. WANDB_MODE
    in the driver's environment sets the mode (offline: no account or network needed), WANDB_DIR
    where run folders go (default: the experiment folder's wandb/, on the driver's machine: Ray
    runs W&B's logging actors there); online mode needs WANDB_API_KEY or `wandb login`."""

    @property
    def trackers(self) -> frozenset[str]:
        return source_set(self.tracking)


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class SearchSpec:
    name: str
    path: Path
    fixed: TrialConfig
    search: dict[str, Distribution]
    resources: Resources
    tune: TuneSettings
    enqueue: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    deepspeed_user: dict[str, Any] | None = None
    """fixed.deepspeed's file, read once here: the trials get its content, not its path."""

    def trial_config(self, sampled: dict[str, Any]) -> TrialConfig:
        return dataclasses.replace(self.fixed, **sampled)

    def largest(self, key: str) -> Any:
        """A setting's largest value in any trial: the searched range's top, or the fixed value."""
        dist = self.search.get(key)
        return max(dist.args) if dist else getattr(self.fixed, key)

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial can run."""
        return int(self.largest("epochs"))


def read_deepspeed_file(path: Path) -> dict[str, Any]:
    """A DeepSpeed JSON file as a dict; ValueError naming the file (and line) otherwise."""
    try:
        loaded = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read the DeepSpeed config: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a JSON object of DeepSpeed settings, got {type(loaded).__name__}")
    return loaded


class _Loader(yaml.SafeLoader):
    """PyYAML reads `1e-4` as a string (YAML 1.1); a learning rate must be a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)
# The resolver above also matches plain integers; keep them ints.
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?\d+$"), list("-+0123456789"))
for _first in "-+0123456789":
    _Loader.yaml_implicit_resolvers[_first].sort(key=lambda r: r[0] != "tag:yaml.org,2002:int")


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(t, str(t))


def _field_types(cls: type) -> dict[str, type]:
    names = {f.name: f.type for f in fields(cls)}
    return {k: {"int": int, "float": float, "str": str, "bool": bool}[v] for k, v in names.items()}  # type: ignore[index]


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {key}: {msg}")

    def no_unknown(self, section: str, given: dict[str, Any], known: list[str]) -> None:
        for key in given:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise self.fail(f"{section}{key}", f"unknown key{hint}; expected one of {', '.join(known)}")

    def typed(self, key: str, value: Any, want: type) -> Any:
        is_bool = isinstance(value, bool)  # bool is an int subclass in Python, not in a YAML file
        if want is float and isinstance(value, int) and not is_bool:
            return float(value)
        ok = is_bool if want is bool else isinstance(value, want) and not is_bool
        if not ok:
            raise self.fail(key, f"expected {_type_name(want)}, got {value!r} ({type(value).__name__})")
        return value

    def section(self, raw: dict[str, Any], name: str, cls: type) -> dict[str, Any]:
        """A section's values, each typed and checked by its field's rule."""
        given = raw.get(name, {}) or {}
        if not isinstance(given, dict):
            raise self.fail(name, f"expected a mapping, got {type(given).__name__}")
        types = _field_types(cls)
        self.no_unknown(f"{name}.", given, list(types))
        values = {k: self.typed(f"{name}.{k}", v, types[k]) for k, v in given.items()}
        for key, value in values.items():
            problem = value_problem(cls, key, value)
            if problem:
                raise self.fail(f"{name}.{key}", problem)
        return values


def value_problem(cls: type, key: str, value: Any) -> str | None:
    """What is wrong with one value of a setting of `cls`, or None."""
    rule = rule_of(cls, key)
    if rule is POSITIVE and rule.problem(value):  # a NaN learning rate is "must be > 0", as before
        return rule.problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite, got {value!r}"
    return rule.problem(value) if rule else None


def _distribution(check: _Checker, key: str, raw: Any, want: type) -> Distribution:
    where = f"search.{key}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise check.fail(where, f"expected one of {{{', '.join(d + ': ...' for d in DISTRIBUTIONS)}}}, got {raw!r}")
    kind, args = next(iter(raw.items()))
    if kind not in DISTRIBUTIONS:
        check.no_unknown(f"{where}.", {kind: args}, list(DISTRIBUTIONS))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise check.fail(where, f"choice: expected a non-empty list, got {args!r}")
        values = tuple(check.typed(f"{where}.choice", v, want) for v in args)
    else:
        if want is str:
            raise check.fail(where, f"{kind}: a string setting can only be searched with choice")
        if not isinstance(args, list) or len(args) != 2:
            raise check.fail(where, f"{kind}: expected [low, high], got {args!r}")
        bound_type = int if kind == "int" else float
        values = tuple(check.typed(f"{where}.{kind}", v, bound_type) for v in args)
        if kind == "int" and want is not int:
            raise check.fail(where, f"int: {key} is {_type_name(want)}, use uniform or loguniform")
        if kind != "int" and want is int:
            raise check.fail(where, f"{kind}: {key} is an integer, use int or choice")
        if not values[0] < values[1]:
            raise check.fail(where, f"{kind}: expected low < high, got {list(values)}")
        if kind == "loguniform" and values[0] <= 0:
            raise check.fail(where, f"loguniform: low must be > 0, got {values[0]!r}")
    for v in values:
        problem = value_problem(TrialConfig, key, v)
        if problem:
            raise check.fail(where, problem)
    return Distribution(kind, values)


TOP_LEVEL = ["name", "fixed", "search", "resources", "tune", "enqueue"]


OVERRIDABLE = ("fixed", "resources", "tune")


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SearchSpec:
    """Read and validate a search-space YAML, with `--set SECTION.KEY=VALUE` overrides applied;
    raise SpecError naming the file (or the override) and key."""
    path = Path(path)
    return parse_spec(with_overrides(read_space(path), overrides), path)


def read_space(path: Path) -> Any:
    if not path.is_file():
        raise SpecError(f"{path}: no such search-space file")
    try:
        return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (safe loader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None


def with_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """The raw space with each "SECTION.KEY=VALUE" set (VALUE read as YAML: 30, gp, 3e-4, true);
    parse_spec then checks the key and value as if the file held them."""
    for item in overrides:
        key, equals, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not equals or not dot or section not in OVERRIDABLE or not name or "." in name:
            raise SpecError(
                f"--set {item}: expected SECTION.KEY=VALUE with SECTION one of {', '.join(OVERRIDABLE)} "
                "(e.g. tune.searcher=gp)"
            )
        try:
            value = yaml.load(text, Loader=_Loader)  # noqa: S506 (safe loader subclass)
        except yaml.YAMLError:
            raise SpecError(f"--set {item}: {text!r} is not a YAML value") from None
        if isinstance(raw, dict) and isinstance(raw.get(section) or {}, dict):
            raw[section] = {**(raw.get(section) or {}), name: value}
    return raw


def parse_spec(raw: Any, path: Path) -> SearchSpec:
    check = _Checker(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    check.no_unknown("", raw, TOP_LEVEL)
    name = check.typed("name", raw.get("name", path.stem), str)

    trial_types = _field_types(TrialConfig)
    fixed = check.section(raw, "fixed", TrialConfig)

    raw_search = raw.get("search") or {}
    if not isinstance(raw_search, dict):
        raise check.fail("search", f"expected a mapping, got {type(raw_search).__name__}")
    check.no_unknown("search.", raw_search, list(SEARCHABLE))
    search = {k: _distribution(check, k, v, trial_types[k]) for k, v in raw_search.items()}
    both = sorted(set(search) & set(fixed))
    if both:
        raise check.fail(f"search.{both[0]}", "is also set in fixed; set it in one place")

    resources = Resources(**check.section(raw, "resources", Resources))
    tune = TuneSettings(**check.section(raw, "tune", TuneSettings))
    # Each value was checked by its rule; what remains are settings that cannot go together.
    if resources.accelerator_type and resources.gpus_per_worker == 0:
        raise check.fail("resources.accelerator_type", "names a GPU, but resources.gpus_per_worker is 0")
    if tune.gpu_hours and resources.gpus_per_worker == 0:
        raise check.fail("tune.gpu_hours", "is a budget of GPU time, but resources.gpus_per_worker is 0")
    given_tune = raw.get("tune") or {}
    for key, tracker in (("mlflow_tracking_uri", "mlflow"), ("wandb_project", "wandb")):
        if key in given_tune and tracker not in tune.trackers:
            used = f"is only used with tune.tracking: {tracker} (tracking is {tune.tracking!r})"
            raise check.fail(f"tune.{key}", used)

    given = set(fixed) | set(search)
    for key in ("per_device_batch", "max_length"):
        dist = search.get(key)
        if dist and dist.kind != "choice":
            # Each value makes its own data build (max_length) or must divide the batch: listed, each checked.
            raise check.fail(f"search.{key}", f"{dist.kind}: search it with choice, a list of the values to try")
        if dist:
            fixed[key] = dist.args[0]  # what the checks before Ray and the dry run take as the fixed value
    # Local paths as absolute ones: trials run in folders of their own, and the report and model
    # card read them later from wherever they are run.
    if "model" in fixed and fixed["model"] not in EMBEDDED_MODELS and Path(fixed["model"]).is_dir():
        fixed["model"] = str(Path(fixed["model"]).resolve())
    if "data" in fixed and fixed["data"] != EMBEDDED_DATA and not fixed["data"].startswith(HUB_PREFIX):
        fixed["data"] = str(Path(fixed["data"]).resolve())
    deepspeed_user = None
    if "deepspeed" in fixed:
        fixed["deepspeed"] = str(Path(fixed["deepspeed"]).resolve())  # the trials run in other folders
        try:
            deepspeed_user = read_deepspeed_file(Path(fixed["deepspeed"]))
        except ValueError as err:
            raise check.fail("fixed.deepspeed", str(err)) from None
    if {"warmup_steps", "warmup_ratio"} <= given:
        where = _where("warmup_ratio", search)
        raise check.fail(where, "is an alternative to warmup_steps; set one of the two (warmup_steps is set)")
    if "warmup_ratio" in given:
        fixed["warmup_steps"] = 0  # the warmup is the ratio's alone
    base = TrialConfig(**fixed)
    _check_combinations(check, base, resources)
    if tune.min_stop_rate and not base.probe_prompts:
        raise check.fail("tune.min_stop_rate", "needs generation probes; fixed.probe_prompts is 0")
    batch_dist = search.get("per_device_batch")
    if batch_dist is None:
        problem = _batch_problem(base.global_batch, base.per_device_batch, resources.workers_per_trial)
        if problem:
            raise check.fail("fixed.global_batch", problem)
    else:
        for batch in batch_dist.args:
            problem = _batch_problem(base.global_batch, batch, resources.workers_per_trial)
            if problem:
                raise check.fail("search.per_device_batch", f"global_batch {problem}")
    enqueue = _enqueued_points(check, raw.get("enqueue") or [], search)
    for i, point in enumerate(enqueue):
        problem = _batch_problem(base.global_batch, point.get("per_device_batch"), resources.workers_per_trial)
        if problem:
            raise check.fail(f"enqueue[{i}].per_device_batch", f"global_batch {problem}")
    return SearchSpec(name, path, base, search, resources, tune, tuple(enqueue), deepspeed_user)


def _where(key: str, search: dict[str, Distribution]) -> str:
    return f"{'search' if key in search else 'fixed'}.{key}"


def _batch_problem(global_batch: int, per_device_batch: int | None, workers: int) -> str | None:
    """Why a per-device batch cannot make the fixed global batch (gradient accumulation fills the rest)."""
    if per_device_batch is None:
        return None
    made = per_device_batch * workers
    if global_batch % made:
        return (
            f"{global_batch} is not a multiple of per_device_batch x workers_per_trial "
            f"= {per_device_batch} x {workers} = {made}"
        )
    return None


def _check_combinations(check: _Checker, cfg: TrialConfig, resources: Resources) -> None:
    """Settings that are each valid but cannot go together."""
    if cfg.precision == "fp16" and resources.gpus_per_worker == 0:
        raise check.fail("fixed.precision", "fp16 needs GPUs (resources.gpus_per_worker > 0); use bf16 or fp32 on CPU")
    if cfg.offload_params and cfg.zero_stage != 3:
        raise check.fail("fixed.offload_params", f"needs zero_stage 3, got {cfg.zero_stage}")
    if cfg.offload_optimizer and cfg.zero_stage == 0:
        raise check.fail("fixed.offload_optimizer", "needs zero_stage 1, 2 or 3")
    if cfg.lora_targets and cfg.method != "lora":
        raise check.fail("fixed.lora_targets", f"is only used with method: lora (method is {cfg.method})")
    if cfg.prompt_format == "chat_template" and cfg.model in EMBEDDED_MODELS:
        raise check.fail(
            "fixed.prompt_format",
            f"chat_template needs the tokenizer's own chat template; built-in model {cfg.model} has none "
            "(use gpt4all, or a model folder or Hub model whose tokenizer carries one)",
        )
    if cfg.hf_cache and (cfg.model in EMBEDDED_MODELS or Path(cfg.model).is_dir()):
        where = "is built in" if cfg.model in EMBEDDED_MODELS else "is a local folder"
        raise check.fail(
            "fixed.hf_cache", f"is only used for a Hub model; model {cfg.model} {where}: nothing is downloaded"
        )


def _enqueued_points(check: _Checker, raw: Any, search: dict[str, Distribution]) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise check.fail("enqueue", f"expected a list of points, got {type(raw).__name__}")
    types = _field_types(TrialConfig)
    points = []
    for i, point in enumerate(raw):
        where = f"enqueue[{i}]"
        if not isinstance(point, dict):
            raise check.fail(where, f"expected a mapping of searched keys, got {point!r}")
        check.no_unknown(f"{where}.", point, list(search))
        missing = sorted(set(search) - set(point))
        if missing:
            raise check.fail(where, f"missing searched key(s) {', '.join(missing)}")
        typed = {k: check.typed(f"{where}.{k}", v, types[k]) for k, v in point.items()}
        for k, v in typed.items():
            problem = value_problem(TrialConfig, k, v)
            if problem:
                raise check.fail(f"{where}.{k}", problem)
        points.append(typed)
    return points
