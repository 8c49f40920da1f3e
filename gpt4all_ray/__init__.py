"""gpt4all-ray: hyperparameter search for LLM instruction fine-tuning (Ray Tune + Optuna over Ray
Train DeepSpeed workers). `run_search` is the Python API; `gpt4all-ray` the command line."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["SearchResult", "run_search"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: every process imports this package (a Ray Train worker too), and the
    # API brings the command line and the driver's modules with it.
    if name in __all__:
        from gpt4all_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'gpt4all_ray' has no attribute {name!r}")
