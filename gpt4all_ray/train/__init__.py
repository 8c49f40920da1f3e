"""The trial workers: one process per rank of a trial, running the DeepSpeed fine-tuning loop.
Imports nothing from search/, experiment/ or cli/ (tests/unit/test_layout.py)."""
