"""gpt4all-ray: hyperparameter search for LLM instruction fine-tuning on Ray (Tune + Optuna + Train/DeepSpeed)."""

__version__ = "0.1.0"
