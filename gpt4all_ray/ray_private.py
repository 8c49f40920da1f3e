"""Every use of Ray's private API, in one place. Ray 2.60 (the pin in pyproject.toml) has no
public way to do these three things; tests/unit/test_ray_private.py fails, naming the missing
name, when a Ray upgrade moves one. Ray's private *attributes* read elsewhere are checked there
too (ASHA's `_brackets` in search/stopping.py, OptunaSearch's `_ot_trials` in search/searcher.py).
"""

from __future__ import annotations

import logging


def ray_address_file() -> str:
    """The file `ray start` writes the head's address to (what "auto" reads when no GCS runs)."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def auto_address() -> str | None:
    """The address ray.init(address="auto") would attach to: a running GCS process's, else the
    one in Ray's address file (Ray's own lookup); None when there is neither. Public ray.init
    would retry an unreachable address for minutes instead of saying so."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None


def quiet_train_report_logger() -> None:
    """Ray Train 2.60 logs every report at INFO under a logger named by its file path, which
    Train's LoggingConfig(log_level=...) does not reach; our progress lines already say the same."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
