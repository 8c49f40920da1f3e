"""gpt4all-ray: hyperparameter search for LLM instruction fine-tuning (Ray Tune + Optuna over Ray
Train DeepSpeed workers). `run_search` is the Python API; `gpt4all-ray` the command line."""

from gpt4all_ray.api import SearchResult, run_search

__all__ = ["SearchResult", "run_search"]
