"""The loops the worker-overhead benchmark holds the product's trial against, each in N
processes on this machine, with the product's tiny model, data, batches and data order:

    python benchmarks/two_process_loops.py --loop bare   --config JSON --out DIR
    python benchmarks/two_process_loops.py --loop worker --config JSON --out DIR
    python benchmarks/two_process_loops.py --loop train  --config JSON --out DIR

`bare` is plain PyTorch (DDP over gloo, torch AdamW, LambdaLR, clipping): the floor. `worker` is
the product's DeepSpeed loop (gpt4all_ray.train.loop.train) without Ray; both start their processes
with torch.multiprocessing. `train` runs that loop as the product's Ray Train workers do (a local
Ray, one TorchTrainer, ray_train_loop) without Ray Tune around it. Each writes DIR/timing.json:
tokens/s per log window (non-pad tokens of all processes / rank 0's seconds), or the TensorBoard
folder that holds them; the Unix times the loop began and its first optimizer step ended; seconds
inside steps and in each phase outside them (the product's last report; bare: its setup).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gpu_worker import free_port  # this folder is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bare_loop(cfg: Any, out: Path) -> dict[str, Any]:
    """Plain PyTorch, the same steps as gpt4all_ray.train.loop.TrialRun.train_step."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from gpt4all_ray.data import load_split
    from gpt4all_ray.data.collate import pad_to_longest
    from gpt4all_ray.data.encode import encode_rows
    from gpt4all_ray.data.tokenizer import load_tokenizer
    from gpt4all_ray.train.loop import param_groups
    from gpt4all_ray.train.model import base_model, trainable
    from gpt4all_ray.train.schedule import lr_multiplier

    started_at, setup_started = time.time(), time.perf_counter()
    own_group = not dist.is_initialized()  # Ray Train starts the group itself
    if own_group:
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_split(cfg)
    tokenizer = load_tokenizer(cfg, data)
    examples, _ = encode_rows(data.train, tokenizer, cfg.max_length, cfg.length_policy, cfg.prompt_format)
    model, _ = base_model(cfg, tokenizer)
    model = trainable(model, cfg)
    ddp = DistributedDataParallel(model)
    steps_per_epoch = len(examples) // cfg.global_batch
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    total_steps = steps_per_epoch * cfg.epochs
    schedule = lr_multiplier(cfg.lr_schedule, cfg.warmup_for(total_steps), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    accumulation = cfg.global_batch // (cfg.per_device_batch * world)
    windows: list[float] = []
    setup_s = time.perf_counter() - setup_started
    first_step_at, train_s, step = None, 0.0, 0
    window_tokens, window_started = 0.0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for step_in_epoch in range(steps_per_epoch):
            started = time.perf_counter()
            batch_rows = order[step_in_epoch * cfg.global_batch : (step_in_epoch + 1) * cfg.global_batch]
            mine = batch_rows.tolist()[rank::world]
            for micro in range(accumulation):
                picked = mine[micro * cfg.per_device_batch : (micro + 1) * cfg.per_device_batch]
                batch = pad_to_longest([examples[i] for i in picked], tokenizer.pad_token_id)
                window_tokens += float((batch["input_ids"] != tokenizer.pad_token_id).sum())
                loss = ddp(**batch).loss / accumulation
                loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_s += time.perf_counter() - started
            first_step_at = first_step_at or time.time()
            if step % cfg.log_every_steps == 0 or step_in_epoch == steps_per_epoch - 1:
                total = torch.tensor([window_tokens], dtype=torch.float64)
                dist.all_reduce(total)
                windows.append(float(total) / (time.perf_counter() - window_started))
                window_tokens, window_started = 0.0, time.perf_counter()
    if own_group:
        dist.destroy_process_group()
    timing = {"tokens_per_s_windows": windows, "first_step_at": first_step_at, "train_s": train_s}
    return timing | {"worker_started_at": started_at, "setup_s": setup_s}


class LastReport:
    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def report(self, evaluation: Any, checkpoint_dir: str | None) -> None:
        self.metrics = evaluation.to_metrics()


def worker_loop(cfg: Any, out: Path) -> dict[str, Any]:
    """The product's loop as a Ray Train worker runs it, minus Ray."""
    from gpt4all_ray.train.loop import train

    reporter = LastReport()
    tb_dir = out / "tb"
    train(cfg, reporter, tb_dir=str(tb_dir), threads=1)
    return {"tb_dir": str(tb_dir)} | reporter.metrics


def ray_train(cfg_json: str, workers: int, out: Path) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from gpt4all_ray.train.ray_entry import ray_train_loop

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    tb_dir = out / "tb"
    result = TorchTrainer(
        ray_train_loop,
        train_loop_config={"trial": json.loads(cfg_json), "tb_dir": str(tb_dir), "threads": 1},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name="train"),  # type: ignore[call-arg]
    ).fit()
    (out / "timing.json").write_text(json.dumps({"tb_dir": str(tb_dir)} | (result.metrics or {})))


def process(rank: int, world: int, port: int, loop: str, cfg_json: str, out: str) -> None:
    import torch

    os.environ |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    torch.set_num_threads(1)  # as the worker does with threads=1
    from gpt4all_ray.config import TrialConfig

    cfg = TrialConfig(**json.loads(cfg_json))
    result = (bare_loop if loop == "bare" else worker_loop)(cfg, Path(out))
    if rank == 0:
        (Path(out) / "timing.json").write_text(json.dumps(result))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=("bare", "worker", "train"), required=True)
    p.add_argument("--config", required=True, help="the trial's settings as JSON (a TrialConfig)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.loop == "train":
        ray_train(args.config, args.workers, args.out.resolve())
        return 0
    import torch.multiprocessing as mp

    mp.spawn(process, args=(args.workers, free_port(), args.loop, args.config, str(args.out)), nprocs=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
