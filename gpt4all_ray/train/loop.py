"""The per-worker fine-tuning loop: DeepSpeed engine, LR schedule, evaluation each epoch (and
every N steps), generation probes of each new best, divergence decision, resumable checkpoint,
metrics and report.

Ray comes in only through `Reporter`, so the same loop runs under torchrun (the GPU check and
the bare-loop baseline) and in fast tests.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data.cache import DEFAULT_ROOT, prepare
from gpt4all_ray.data.collate import pack, pad_to_longest
from gpt4all_ray.data.encode import IGNORE
from gpt4all_ray.data.tokenizer import is_builtin
from gpt4all_ray.divergence import DivergencePolicy
from gpt4all_ray.evaluation import PHASES, Evaluation, StopReason
from gpt4all_ray.train.checkpoint import LoopState, ResumePoint, load_state, pick_resumable, save_model, save_state
from gpt4all_ray.train.ds_config import deepspeed_config, gradient_accumulation
from gpt4all_ray.train.ds_ops import use_own_op_builds
from gpt4all_ray.train.faults import FaultPoints, NoFaults
from gpt4all_ray.train.loss import loss_sum_and_count
from gpt4all_ray.train.model import base_model, trainable
from gpt4all_ray.train.optimizer import SkippableAdamW
from gpt4all_ray.train.probes import ProbeCounts, run_probes
from gpt4all_ray.train.schedule import lr_multiplier
from gpt4all_ray.train.tensorboard import open_writer
from gpt4all_ray.train.throughput import flop_model, known_peak_tflops


class Reporter(Protocol):
    def report(self, evaluation: Evaluation, checkpoint_dir: str | None) -> None:
        """Called by every rank at each evaluation with its own checkpoint folder (the ranks'
        folders together make the checkpoint)."""


class HyperparameterMismatch(RuntimeError):
    """A sampled value did not reach the optimizer (GPT4All's weight-decay knob never did)."""


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Adds the block's wall time to seconds[phase]."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - started


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """DeepSpeed prints op-build lines on import (when torch.distributed is up) and on init. Under
    Ray Train, print() is patched to log at INFO, so stdout redirection alone does not hide them."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only: biases and norm scales (1-D) are not regularised. LoRA has no 1-D
    # trainables, and an empty group trips ZeRO, so empty groups are left out.
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "decay", "params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def check_hyperparameters(
    optimizer: Any, cfg: TrialConfig, multiplier: Callable[[int], float], scheduler: Any, total_steps: int
) -> None:
    """After the engine is built: the learning rate, schedule and weight decay that will act are
    the sampled ones."""
    want_lr = cfg.learning_rate * multiplier(0)
    for group in optimizer.param_groups:
        if not math.isclose(group["lr"], want_lr, rel_tol=1e-6):
            raise HyperparameterMismatch(f"param group {group.get('name')}: lr {group['lr']} != sampled {want_lr}")
        want_decay = cfg.weight_decay if group.get("name") == "decay" else 0.0
        if group["weight_decay"] != want_decay:
            raise HyperparameterMismatch(
                f"param group {group.get('name')}: weight decay {group['weight_decay']} in the optimizer, "
                f"{want_decay} wanted (sampled {cfg.weight_decay})"
            )
    # The schedule the engine will step, probed where schedules differ: warmup, its end, the
    # middle and the last step.
    if scheduler is None:
        raise HyperparameterMismatch(f"no LR scheduler reached the engine; {cfg.lr_schedule} was sampled")
    warmup = cfg.warmup_for(total_steps)
    expected = lr_multiplier(cfg.lr_schedule, warmup, total_steps)
    probes = sorted({0, warmup // 2, warmup, total_steps // 2, max(0, total_steps - 1)})
    want = [expected(s) for s in probes]
    for lam in getattr(scheduler, "lr_lambdas", [None]):
        got = [lam(s) for s in probes] if lam else []
        if not got or not all(math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12) for g, w in zip(got, want, strict=True)):
            raise HyperparameterMismatch(
                f"lr schedule: the engine's multipliers at steps {probes} are {got}, "
                f"{cfg.lr_schedule} with warmup {warmup} over {total_steps} steps gives {want}"
            )


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


StepHook = Callable[[int, int, list[int], float], None]
"""(global_step, rank, example indices this rank trained on, this rank's mean loss): for tests."""


class TrialRun:
    """One worker's share of a trial: data, model and DeepSpeed engine, built once."""

    def __init__(
        self,
        cfg: TrialConfig,
        data_cache: Path,
        threads: int = 1,
        faults: FaultPoints | None = None,
        ds_config: dict[str, Any] | None = None,
    ) -> None:
        self.faults = faults or NoFaults()
        # Where the time outside optimizer steps goes, by phase (each reported as <phase>_s): in a
        # short trial, most of its wall time. train() adds the attempts before this one.
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.started_at = time.time()
        # DeepSpeed picks its accelerator at import: CPU here, CUDA on a GPU node.
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        if cfg.precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("precision fp16 needs a GPU (loss scaling on CPU is not supported); use bf16 or fp32")
        with timed(self.seconds, "setup_libraries"):
            _quiet_libraries()
            torch.set_num_threads(threads)
            use_own_op_builds()  # before DeepSpeed loads its CPU op: this environment's build and ninja
            with _silenced():
                import deepspeed

                deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.cfg = cfg
        self.rank, self.world = _rank_and_world()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"

        with timed(self.seconds, "setup_data"):
            # Mapped from the experiment's one build (the driver made it before the trials), or
            # built here when this trial's data settings need a new one.
            self.data = prepare(cfg, data_cache)
            self.tokenizer = self.data.tokenizer
            self.train_examples, self.val_examples = self.data.train, self.data.val
        self.steps_per_epoch = len(self.train_examples) // cfg.global_batch
        if self.steps_per_epoch == 0:
            rows = len(self.train_examples)
            raise ValueError(f"{rows} training rows make no step of global_batch {cfg.global_batch}")
        self.accumulation = gradient_accumulation(cfg, self.world)
        if ds_config and ds_config["gradient_accumulation_steps"] != self.accumulation:
            raise ValueError(f"the DeepSpeed config was made for another world size than this trial's {self.world}")
        # The trial's driver merged the user's DeepSpeed file; run alone (torchrun), the worker does.
        self.ds_config = ds_config or deepspeed_config(cfg, self.world)

        with timed(self.seconds, "setup_model"):
            if cfg.zero_stage == 3 and not is_builtin(cfg):
                from transformers.integrations import HfDeepSpeedConfig

                # While this object lives, from_pretrained loads each weight straight into its
                # ZeRO-3 partition (a 6B model never sits whole on one GPU).
                self._zero3_loading = HfDeepSpeedConfig(self.ds_config)
            base, self.embeddings_grew = base_model(cfg, self.tokenizer)
            model = trainable(base, cfg)
        self.flops = flop_model(model)
        self.peak_flops = self._peak_flops()
        total_steps = self.steps_per_epoch * cfg.epochs
        multiplier = lr_multiplier(cfg.lr_schedule, cfg.warmup_for(total_steps), total_steps)
        self.optimizer = SkippableAdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, multiplier)
        with timed(self.seconds, "setup_engine"), _silenced():
            self.engine, ds_optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=self.optimizer, lr_scheduler=scheduler, config=self.ds_config
            )
        # ZeRO-0 in fp32: DeepSpeed steps our optimizer as it is, with no check of the gradients and
        # no gradient norm; the loop checks and measures them itself (check_finite_step).
        self.gradients_unchecked = self.engine.optimizer is self.optimizer
        self.gradients = [p for p in model.parameters() if p.requires_grad]
        self.own_grad_norm: torch.Tensor | None = None  # the last step's, where DeepSpeed has none
        check_hyperparameters(ds_optimizer, cfg, multiplier, self.scheduler, total_steps)
        self.probe_rows = self.data.probe_rows(cfg.probe_prompts, cfg.data_seed)

    def _peak_flops(self) -> float | None:
        if self.cfg.peak_tflops:
            return self.cfg.peak_tflops * 1e12
        if not torch.cuda.is_available():
            return None
        peak = known_peak_tflops(torch.cuda.get_device_name(), self.cfg.precision)
        return peak * 1e12 if peak else None

    def batch(self, examples: list[Any]) -> dict[str, Any]:
        return {k: v.to(self.device) for k, v in self.cpu_batch(examples).items()}

    def cpu_batch(self, examples: list[Any]) -> dict[str, Any]:
        pad_id, cfg = self.tokenizer.pad_token_id, self.cfg
        if cfg.collate == "pack":
            return pack(examples, pad_id, cfg.max_length)
        return pad_to_longest(examples, pad_id, cfg.max_length if cfg.collate == "max_length" else None)

    def all_reduced(self, *values: float) -> list[float]:
        """Sums over all workers."""
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(totals)
        return totals.tolist()

    def epoch_order(self, epoch: int) -> list[int]:
        # The same permutation on every rank, a pure function of (seed, epoch): a resumed run
        # continues it at its step, neither repeating nor skipping rows.
        shuffle = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        return torch.randperm(len(self.train_examples), generator=shuffle).tolist()

    def train_step(self, mine: list[int], step: int) -> StepTotals:
        """Optimizer step `step` (1-based, global; all its micro-batches) on this rank's examples."""
        cfg = self.cfg
        totals = StepTotals(loss_sum=torch.zeros((), dtype=torch.float64, device=self.device))
        non_finite_losses = torch.zeros((), dtype=torch.float64, device=self.device)
        finite, skipped_before = True, self.engine.skipped_steps
        injected = self.faults.loss_factor(self.rank, step)  # 1.0 unless a test asks
        for micro in range(self.accumulation):
            picked = mine[micro * cfg.per_device_batch : (micro + 1) * cfg.per_device_batch]
            cpu = self.cpu_batch([self.train_examples[i] for i in picked])
            # Counted on the host copy: reading a count off the GPU would sync every micro-batch.
            labels = float((cpu["labels"][:, 1:] != IGNORE).sum())
            real = float((cpu["input_ids"] != self.tokenizer.pad_token_id).sum())
            batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu.items()}
            loss = self.engine(**batch).loss
            if injected != 1.0:
                loss = loss * injected
            self.engine.backward(loss)
            non_finite_losses += (~torch.isfinite(loss.detach())).double()
            if micro == self.accumulation - 1:  # DeepSpeed's next step() is the optimizer step
                finite = self.check_finite_step(non_finite_losses)
            self.engine.step()
            self.faults.after_micro_batch(self.rank, step, micro + 1)
            totals.loss_sum += loss.detach().double() * labels  # stays on the device: no sync per micro-batch
            totals.label_tokens += labels
            totals.tokens += real
            totals.flops += real * self.flops.per_token(batch["input_ids"].shape[1])
        if not finite and self.engine.skipped_steps == skipped_before:
            # DeepSpeed counts the steps its own checks skip, and at ZeRO-0 fp32 the one the
            # optimizer refused (its `overflow`); a step refused for its loss alone, where the
            # gradients DeepSpeed checked were finite, is counted here.
            self.engine.skipped_steps += 1
        return totals

    def check_finite_step(self, non_finite_losses: torch.Tensor) -> bool:
        """Before the optimizer step: refuse it unless every rank's losses, and the gradients where
        DeepSpeed does not check them, are finite. One all-reduced count, so every rank decides
        alike (a rank whose loss alone was NaN would otherwise step while the others skip)."""
        bad = non_finite_losses.clone()
        if self.gradients_unchecked:
            # DeepSpeed has all-reduced the gradients by now: every rank measures the same norm.
            self.own_grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.gradients if p.grad is not None])
            bad += (~torch.isfinite(self.own_grad_norm)).double()
        if dist.is_initialized():
            dist.all_reduce(bad)
        self.optimizer.skip_next = bool(bad.item())
        return not self.optimizer.skip_next

    def window_stats(self, window: StepTotals) -> WindowStats:
        """All ranks: a log window's statistics over all workers."""
        loss_sum, labels, tokens, flops = self.all_reduced(
            float(window.loss_sum), window.label_tokens, window.tokens, window.flops
        )
        seconds = max(time.perf_counter() - window.started, 1e-9)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None and self.own_grad_norm is not None:
            grad_norm = self.own_grad_norm.item()  # ZeRO-0 fp32: the last step's, measured by the loop
        return WindowStats(
            loss_sum=loss_sum,
            label_tokens=labels,
            loss=loss_sum / max(labels, 1),
            lr=self.scheduler.get_last_lr()[0],
            tokens_per_s=tokens / seconds,
            grad_norm=float(grad_norm) if grad_norm is not None and math.isfinite(float(grad_norm)) else None,
            mfu=flops / seconds / (self.peak_flops * self.world) if self.peak_flops else None,
            loss_scale=float(self.engine.optimizer.cur_scale) if self.cfg.precision == "fp16" else None,
        )

    def probe(self) -> dict[str, float]:
        """Generation probes of the current weights, over all workers' shares of the prompts."""
        counts = run_probes(
            self.engine.module,
            self.tokenizer,
            self.cfg,
            self.probe_rows,
            self.device,
            self.rank,
            self.world,
            synced=self.cfg.zero_stage == 3,
        )
        mine = asdict(counts)
        return ProbeCounts(**dict(zip(mine, self.all_reduced(*mine.values()), strict=True))).scores()

    def evaluate(self) -> float:
        """Token-weighted validation loss over all workers' shards."""
        # Every rank runs the same number of forwards (ZeRO-3 gathers weights in each one);
        # a rank with nothing left re-runs its first example and does not count it.
        b, val = self.cfg.per_device_batch, self.val_examples
        shard = range(self.rank, len(val), self.world)  # rows are read from the map batch by batch
        n_batches = math.ceil(math.ceil(len(val) / self.world) / b)
        loss_sum = count = 0.0
        self.engine.eval()
        with torch.no_grad():
            for i in range(n_batches):
                chunk = [val[row] for row in shard[i * b : (i + 1) * b]]
                batch_sum, batch_count = loss_sum_and_count(self.engine, self.batch(chunk or [val[shard[0]]]))
                if chunk:
                    loss_sum, count = loss_sum + batch_sum.item(), count + batch_count.item()
        self.engine.train()
        total, tokens = self.all_reduced(loss_sum, count)
        return total / max(tokens, 1)


@dataclass(frozen=True)
class WindowStats:
    """What the steps of one log window did, over all workers (TensorBoard's train/* scalars)."""

    loss_sum: float
    label_tokens: float
    loss: float
    lr: float
    tokens_per_s: float
    grad_norm: float | None
    mfu: float | None
    loss_scale: float | None

    def scalars(self) -> dict[str, float]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("loss_sum", "label_tokens")}
        return {f"train/{name}": value for name, value in values.items() if value is not None}


@dataclass
class StepTotals:
    """What optimizer steps did on this rank: one step's, or a log window's (the steps since the
    last log line) added up."""

    loss_sum: Any = 0.0
    """Label-token-weighted loss, a device tensor: read only when a window closes (no sync a step)."""
    label_tokens: float = 0.0
    tokens: float = 0.0
    """Non-pad tokens (what tokens/s and MFU count)."""
    flops: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, step: StepTotals) -> None:
        self.loss_sum += step.loss_sum
        self.label_tokens += step.label_tokens
        self.tokens += step.tokens
        self.flops += step.flops


def rows_of_step(order: list[int], step_in_epoch: int, global_batch: int, rank: int, world: int) -> list[int]:
    """The rows rank `rank` trains on at this step: its share of the step's global batch in the
    epoch's order. Over an epoch the ranks' shares are disjoint and cover every whole global batch,
    and the global batch does not depend on the number of workers."""
    return order[step_in_epoch * global_batch : (step_in_epoch + 1) * global_batch][rank::world]


def epoch_progress(step: int, steps_per_epoch: int) -> float:
    """Steps done in epochs (1.0 at the end of epoch 1), as reported: the divergence rule judges the
    same numbers here and in the driver's stopper."""
    return round(step / steps_per_epoch, 6)


def perplexity(val_loss: float) -> float | None:
    """Only where it is a number: e^50 and above (or a NaN loss) would make Tune's TensorBoard
    logger warn "NaN or Inf found" at every report, and the loss says it already."""
    return math.exp(val_loss) if val_loss < 50 else None


def write_hparams(writer: Any, hparams: dict[str, Any]) -> None:
    """The trial's sampled values in TensorBoard's HParams tab, in the same run as its curves
    (SummaryWriter.add_hparams would put them in a run of their own)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()}
    metrics = {"val/loss": 0.0, "train/loss": 0.0}  # tags the HParams tab reads from this run
    for summary in hparams_summary(values, metrics):
        writer.file_writer.add_summary(summary)


@dataclass
class Attempt:
    """This attempt of the trial (a restarted worker group makes a new one)."""

    started_at: float
    """Unix time this worker started."""
    resumed_from_step: int = 0
    """The checkpoint's step when this attempt resumed a killed one."""
    resume_fallbacks: int = 0
    """Newer checkpoints passed over as broken when it resumed."""
    first_step_at: float | None = None
    """Unix time this attempt's first optimizer step ended."""


class TrialLoop:
    """One worker's trial in the order it runs: setup (TrialRun builds data, model and engine; a
    restart loads its checkpoint), then each optimizer step, and at each evaluation: evaluate,
    decide, checkpoint, report. It owns the loop's state: the checkpointed LoopState, the attempt
    and the open log window."""

    def __init__(
        self,
        run: TrialRun,
        reporter: Reporter,
        state: LoopState,
        attempt: Attempt,
        writer: Any = None,
        on_step: StepHook | None = None,
    ) -> None:
        self.run, self.cfg, self.reporter, self.writer, self.on_step = run, run.cfg, reporter, writer, on_step
        self.state, self.attempt = state, attempt
        self.policy = DivergencePolicy.for_trial(run.cfg)
        self.window = StepTotals()
        self.seconds = state.phase_seconds  # every phase, all attempts: checkpointed with the state

    @classmethod
    def setup(
        cls,
        cfg: TrialConfig,
        reporter: Reporter,
        tb_dir: str | None,
        data_cache: Path,
        threads: int,
        resume_from: str | None,
        on_step: StepHook | None,
        hparams: dict[str, Any] | None,
        worker_group_s: float,
        faults: FaultPoints | None,
        ds_config: dict[str, Any] | None = None,
    ) -> TrialLoop:
        # The newest valid checkpoint, picked before the engine is built: with none usable the trial
        # fails at once, naming each, instead of loading a broken one or starting over from step 0.
        point = pick_resumable(Path(resume_from)) if resume_from else None
        run = TrialRun(cfg, data_cache, threads, faults, ds_config)
        run.seconds["worker_group"] = worker_group_s
        state, attempt = LoopState(), Attempt(started_at=run.started_at)
        if point:
            _same_pick_on_every_rank(run, point)
            if run.rank == 0:
                for line in point.fallback_lines():
                    print(line, flush=True)
            with timed(run.seconds, "resume"):
                state = load_state(run.engine, point.folder, run.rank)
            attempt.resume_fallbacks = len(point.skipped)
        attempt.resumed_from_step = state.global_step
        # Phases count all attempts, as train_seconds does: this attempt's setup joins the checkpoint's.
        for phase, seconds in run.seconds.items():
            state.phase_seconds[phase] = state.phase_seconds.get(phase, 0.0) + seconds
        writer = None
        if run.rank == 0 and tb_dir:
            # After a restart, drop what the killed attempt logged past the checkpoint.
            writer = open_writer(tb_dir, purge_step=state.global_step + 1 if point else None)
            if hparams and not point:
                write_hparams(writer, hparams)
            if point:
                print(f"resumed at epoch {state.epoch}, step {state.global_step} from {point.folder}", flush=True)
        return cls(run, reporter, state, attempt, writer, on_step)

    def train(self) -> None:
        """Every epoch's steps, evaluating where due, until the last epoch or a stop."""
        state, run, cfg = self.state, self.run, self.cfg
        stopped = False
        while state.epoch <= cfg.epochs and not stopped:
            order, epoch_started = run.epoch_order(state.epoch), time.perf_counter()
            while state.step_in_epoch < run.steps_per_epoch and not stopped:
                self.step(order)
                epoch_end = state.step_in_epoch == run.steps_per_epoch
                eval_due = epoch_end or (cfg.eval_every_steps > 0 and state.global_step % cfg.eval_every_steps == 0)
                if eval_due or state.global_step % cfg.log_every_steps == 0:
                    # An evaluation reports the epoch's train loss so far: the window closes then too.
                    window = self.close_window()
                if eval_due:
                    evaluation, improved, probes = self.evaluate(epoch_end, window, time.perf_counter() - epoch_started)
                    self.log(evaluation, probes)
                    self.checkpoint_and_report(evaluation, improved)
                    stopped = evaluation.stop_reason not in (StopReason.RUNNING, StopReason.COMPLETED)
                    self.window = StepTotals()  # tokens/s counts training steps, not the evaluation and checkpoint
            if not stopped:
                state.next_epoch()

    def step(self, order: list[int]) -> None:
        """One optimizer step at the state's data position in this epoch's order."""
        state, run = self.state, self.run
        mine = rows_of_step(order, state.step_in_epoch, self.cfg.global_batch, run.rank, run.world)
        started = time.perf_counter()
        totals = run.train_step(mine, state.global_step + 1)
        self.window.add(totals)
        state.global_step += 1
        state.step_in_epoch += 1
        if self.on_step:
            self.on_step(state.global_step, run.rank, mine, (totals.loss_sum / max(totals.label_tokens, 1)).item())
        state.train_seconds += time.perf_counter() - started
        if self.attempt.first_step_at is None:
            self.attempt.first_step_at = time.time()
        run.faults.after_step(run.rank, state.global_step)

    def close_window(self) -> WindowStats:
        """All ranks: the log window's statistics, written to TensorBoard; its loss joins the epoch's."""
        stats, self.window = self.run.window_stats(self.window), StepTotals()
        self.state.epoch_loss_sum += stats.loss_sum
        self.state.epoch_label_tokens += stats.label_tokens
        if self.writer:
            for key, value in stats.scalars().items():
                self.writer.add_scalar(key, value, self.state.global_step)
        return stats

    def evaluate(
        self, epoch_end: bool, window: WindowStats, epoch_s: float
    ) -> tuple[Evaluation, bool, dict[str, float]]:
        """All ranks: validation loss, probes where due, and the decision; the evaluation to report,
        whether it is a new best, and this evaluation's probe scores."""
        state, run, cfg = self.state, self.run, self.cfg
        with timed(self.seconds, "evaluate"):
            val_loss = run.evaluate()
        improved = val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_epoch, state.best_step = val_loss, state.epoch, state.global_step
        state.evaluations.append((state.global_step, val_loss))
        probes_due = cfg.probe_prompts and (improved or (epoch_end and cfg.probe_each_epoch))
        with timed(self.seconds, "probes"):
            probes = run.probe() if probes_due else {}
        if improved:
            state.best_probes = probes
        skipped = int(run.engine.skipped_steps)
        reason = self.decide(epoch_end, skipped)
        state.skipped_at_last_evaluation = skipped
        evaluation = Evaluation(
            epoch=state.epoch,
            step=state.global_step,
            epoch_end=epoch_end,
            epoch_progress=epoch_progress(state.global_step, run.steps_per_epoch),
            val_loss=val_loss,
            # Only an evaluation that improved holds the exported model, so every other one (a tie,
            # a rise, a NaN) scores the largest float: finite, since Tune's TensorBoard logger warns
            # "NaN or Inf found" at every inf.
            checkpoint_score=val_loss if improved else sys.float_info.max,
            train_loss=state.epoch_loss_sum / max(state.epoch_label_tokens, 1),
            best_val_loss=state.best_val_loss,
            best_epoch=state.best_epoch,
            best_step=state.best_step,
            lr=run.scheduler.get_last_lr()[0],
            epoch_s=epoch_s,
            stop_reason=reason,
            resumed_from_step=self.attempt.resumed_from_step,
            resume_fallbacks=self.attempt.resume_fallbacks,
            skipped_steps=skipped,
            train_s=state.train_seconds,
            first_step_at=self.attempt.first_step_at,
            worker_started_at=self.attempt.started_at,
            truncated_rows=run.data.encoding.truncated,
            dropped_too_long_rows=len(run.data.encoding.dropped_too_long),
            duplicate_rows=len(run.data.report.dropped.get("duplicate", [])),
            tokens_per_s=window.tokens_per_s,
            grad_norm=window.grad_norm,
            mfu=window.mfu,
            loss_scale=window.loss_scale,
            val_ppl=perplexity(val_loss),
            # Checkpoint and report seconds count the evaluations before this one: this one's are
            # not over yet (the evaluation is saved in the checkpoint).
            phase_seconds=dict(self.seconds),
            # The best checkpoint's probes (exact match is NaN, left out, where no answer is exact).
            probes={key: value for key, value in state.best_probes.items() if math.isfinite(value)},
        )
        return evaluation, improved, probes

    def decide(self, epoch_end: bool, skipped: int) -> StopReason:
        """The divergence policy on every evaluation so far, then non-finite training, then the
        last epoch's end. Every rank judges the same all-reduced losses: all stop together."""
        steps = [step for step, _ in self.state.evaluations]
        epochs = [epoch_progress(step, self.run.steps_per_epoch) for step in steps]
        reason = self.policy.decide([loss for _, loss in self.state.evaluations], epochs).reason
        # DeepSpeed skips a step whose gradients are not finite. Without fp16's loss scaling (whose
        # first steps skip by design; DeepSpeed itself gives up when the scale collapses) a skipped
        # step is a real NaN/inf, and when every step since the last evaluation was skipped the
        # trial no longer trains.
        interval = steps[-1] - (steps[-2] if len(steps) > 1 else self.attempt.resumed_from_step)
        all_skipped = interval > 0 and skipped - self.state.skipped_at_last_evaluation >= interval
        if not reason and all_skipped and self.cfg.precision != "fp16":
            reason = StopReason.NON_FINITE
        if not reason and epoch_end and self.state.epoch == self.cfg.epochs:
            reason = StopReason.COMPLETED
        return reason

    def log(self, evaluation: Evaluation, probes: dict[str, float]) -> None:
        """Rank 0: the evaluation in TensorBoard (val/*, and this evaluation's probe/* scores)."""
        if not self.writer:
            return
        step = evaluation.step
        self.writer.add_scalar("val/loss", evaluation.val_loss, step)
        if evaluation.val_ppl is not None:
            self.writer.add_scalar("val/ppl", evaluation.val_ppl, step)
        if evaluation.epoch_end:
            self.writer.add_scalar("val/loss_by_epoch", evaluation.val_loss, evaluation.epoch)
        for key, value in probes.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"probe/{key}", value, step)
        self.writer.flush()

    def checkpoint_and_report(self, evaluation: Evaluation, improved: bool) -> None:
        """All ranks: the resumable state (and, at a new best, the exported model) in a folder of
        this rank's, handed over with the evaluation (Ray Train persists it then)."""
        run = self.run
        with tempfile.TemporaryDirectory(prefix="gpt4all_ray_ckpt_") as tmp:
            folder = Path(tmp)
            with timed(self.seconds, "checkpoint"):
                if improved:
                    metrics = evaluation.to_metrics()
                    save_model(
                        run.engine,
                        run.tokenizer,
                        self.cfg,
                        run.ds_config,
                        metrics,
                        folder,
                        run.rank,
                        run.embeddings_grew,
                    )
                save_state(run.engine, self.state, folder, run.rank)
            with timed(self.seconds, "report"):
                self.reporter.report(evaluation, tmp)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def train(
    cfg: TrialConfig,
    reporter: Reporter,
    tb_dir: str | None = None,
    threads: int = 1,
    resume_from: str | None = None,
    on_step: StepHook | None = None,
    data_cache: str | Path | None = None,
    hparams: dict[str, Any] | None = None,
    worker_group_s: float = 0.0,
    faults: FaultPoints | None = None,
    ds_config: dict[str, Any] | None = None,
) -> None:
    """Train for cfg.epochs, evaluating at each epoch end (and every eval_every_steps), each
    evaluation reported with a checkpoint that resumes the run; the model itself is exported only
    when validation loss improved. Stops on all ranks at once when the divergence policy says so."""
    cache = Path(data_cache) if data_cache else DEFAULT_ROOT
    loop = TrialLoop.setup(
        cfg, reporter, tb_dir, cache, threads, resume_from, on_step, hparams, worker_group_s, faults, ds_config
    )
    try:
        loop.train()
    finally:
        loop.close()


def _same_pick_on_every_rank(run: TrialRun, point: ResumePoint) -> None:
    # The pick is a function of the files alone; ranks that see different files (storage not
    # shared) would load different states, so every rank stops instead.
    if not dist.is_initialized():
        return
    mine = torch.tensor([point.step, -point.step, len(point.skipped), -len(point.skipped)], device=run.device)
    widest = mine.clone()
    dist.all_reduce(widest, op=dist.ReduceOp.MAX)
    if not torch.equal(widest, mine):
        raise RuntimeError(
            f"rank {run.rank} would resume from {point.folder} (step {point.step}), another rank from another "
            "checkpoint: the ranks do not see the same checkpoint files"
        )
