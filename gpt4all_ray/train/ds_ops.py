"""Where torch builds DeepSpeed's just-in-time ops (on CPU workers: the shared-memory op)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

SHM_OP = "deepspeed_shm_comm"


def extensions_dir() -> Path:
    """TORCH_EXTENSIONS_DIR if set, else one folder per Python environment. torch's own default is
    one folder per machine, and a build there names one environment's torch headers, so two
    virtual environments on a machine rebuild the op (35-40 s on 2 cores, silently, inside the
    first trial) whenever the other one used it last."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path.home() / ".cache" / "torch_extensions" / f"{python}-{environment}"


def use_own_op_builds() -> None:
    """This process's torch builds and loads its ops in extensions_dir(), with this environment's
    own ninja (pip's, a DeepSpeed dependency) when it has one; call it before DeepSpeed loads an op
    (deepspeed.init_distributed on CPU).

    torch runs whichever ninja PATH finds first: the environment's when it is activated, else the
    system's. Their build logs disagree (ninja 1.11 and 1.13 hash a build command differently), so
    each switch between them rebuilt the op, 35-40 s inside the first trial."""
    os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if Path(scripts, "ninja").is_file() and path[:1] != [scripts]:
        os.environ["PATH"] = os.pathsep.join([scripts, *path])


def shm_op_built() -> bool:
    """Whether this environment's shared-memory op is built and newer than the DeepSpeed sources it
    is built from: ninja rebuilds it otherwise (a virtual environment made again at the same path)."""
    built = extensions_dir() / SHM_OP / f"{SHM_OP}.so"
    if not built.is_file():
        return False
    package = importlib.util.find_spec("deepspeed")  # found, not imported (seconds in the driver)
    folders = (package.submodule_search_locations or []) if package else []
    sources = [cpp for folder in folders for cpp in Path(folder).glob("ops/csrc/cpu/comm/shm*.cpp")]
    return all(cpp.stat().st_mtime <= built.stat().st_mtime for cpp in sources)
