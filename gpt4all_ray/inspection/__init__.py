"""Offline inspection of a finished checkpoint: evaluate (its validation loss), analyze (per-example losses)."""
