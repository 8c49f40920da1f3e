"""Where Ray keeps an experiment's trial folders and checkpoints: the experiment's own ray/ folder
by default (a local path, or shared storage every node mounts), or `--storage URI`: any
filesystem pyarrow opens from a URI (s3://, gs://, hdfs://, file://) that every node reaches.

The report reads a local mirror of Tune's trial folders (results and configs, no checkpoints),
and best/ is copied from the best checkpoint through the same filesystem, without its resume
state, so the same code serves a local folder and a bucket."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all_ray.config import SpecError

# Filesystems that live in one process's memory: Ray's trial and worker processes cannot see them.
IN_PROCESS = ("memory://", "mock://")
EXPECTED = "a URI every node reaches, such as s3://bucket/path, gs://bucket/path, hdfs://host/path or file:///abs/path"


def ray_root(storage: str | None, exp_dir: Path) -> str:
    """The folder (path or URI) that holds Ray's tune/ and train/ for this experiment."""
    return f"{storage.rstrip('/')}/{exp_dir.name}/ray" if storage else str(exp_dir / "ray")


def filesystem(root: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(root)


def check_storage(storage: str) -> None:
    """Before Ray starts: the URI opens, is not in-process, and takes a file."""
    if storage.startswith(IN_PROCESS):
        raise SpecError(
            f"--storage {storage}: an in-memory filesystem lives inside one process, and Ray's trial and "
            f"worker processes could not see what the others wrote; expected {EXPECTED}"
        )
    try:
        fs, path = filesystem(storage)
    except Exception as err:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ValueError...)
        raise SpecError(f"--storage {storage}: pyarrow cannot open it ({err}); expected {EXPECTED}") from None
    probe = f"{path.rstrip('/')}/.gpt4all_ray_write_check"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as err:  # noqa: BLE001
        raise SpecError(f"--storage {storage}: cannot write there ({err})") from None


def mirror(root: str, folder: str, local_dir: Path) -> None:
    """Copy <root>/<folder> from Ray's storage next to the report: Tune's experiment folder (trial
    results and configs, which a later `python -m gpt4all_ray.experiment.report` reads), or the
    TensorBoard logs the trials wrote there. Nothing to copy is no error."""
    import pyarrow.fs

    fs, path = filesystem(root)
    if fs.get_file_info(f"{path}/{folder}").type != pyarrow.fs.FileType.Directory:
        return
    local_dir.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(
        f"{path}/{folder}", str(local_dir), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
    )


def tree_bytes(root: str) -> int:
    """Bytes of the files under a path or URI; 0 when it does not exist."""
    import pyarrow.fs

    fs, path = filesystem(root)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(info.size or 0 for info in infos if info.type == pyarrow.fs.FileType.File)


@dataclass(frozen=True)
class StorageUsed:
    """What an experiment holds: Ray's storage (trial results and checkpoints) and the rest of
    the experiment folder (best model, tokenized data, TensorBoard, Optuna study)."""

    root: str
    ray_bytes: int
    checkpoints: int
    with_resume_state: int
    """Checkpoints still holding their resume state (a trial running, failed, or kept by setting)."""
    folder_bytes: int

    def lines(self) -> list[str]:
        return [
            "| | size |",
            "|---|---|",
            f"| Ray's storage (`{self.root}`): {self.checkpoints} checkpoints, {self.with_resume_state} "
            f"with resume state | {human_bytes(self.ray_bytes)} |",
            "| this folder besides ray/ (best model, tokenized data, TensorBoard) | "
            f"{human_bytes(self.folder_bytes)} |",
        ]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def storage_used(exp_dir: Path, root: str) -> StorageUsed:
    import pyarrow.fs

    from gpt4all_ray.train.checkpoint import RESUME_DIR

    fs, path = filesystem(root)
    checkpoints = resumable = 0
    for info in fs.get_file_info(pyarrow.fs.FileSelector(f"{path}/train", recursive=True, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            checkpoints += 1
            resumable += fs.get_file_info(f"{info.path}/{RESUME_DIR}").type == pyarrow.fs.FileType.Directory
    # ray/ in the folder is Ray's storage itself, or (with --storage) a mirror of its trial results.
    ray_mirror = exp_dir / "ray"
    folder_files = (f for f in exp_dir.rglob("*") if f.is_file() and not f.is_relative_to(ray_mirror))
    return StorageUsed(root, tree_bytes(root), checkpoints, resumable, sum(f.stat().st_size for f in folder_files))


def drop_resume_state(run_dir: str) -> int:
    """Delete the resume state (engine, optimizer, RNG: RESUME_DIR) of every checkpoint of one
    Ray Train run, keeping each exported model; returns the bytes freed."""
    import pyarrow.fs

    from gpt4all_ray.train.checkpoint import RESUME_DIR

    fs, path = filesystem(run_dir)
    freed = 0
    for info in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            resume = f"{info.path}/{RESUME_DIR}"
            freed += tree_bytes(f"{run_dir.rstrip('/')}/{info.base_name}/{RESUME_DIR}")
            if fs.get_file_info(resume).type == pyarrow.fs.FileType.Directory:
                fs.delete_dir(resume)
    return freed


def fetch_checkpoint(root: str, checkpoint_path: str, dest: Path, skip: str) -> None:
    """Copy a checkpoint (a path in the storage's filesystem, as Ray reports it) to a local
    folder, leaving out its `skip` subfolder."""
    import pyarrow.fs

    fs, _ = filesystem(root)
    base = checkpoint_path.rstrip("/")
    for info in fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True)):
        relative = info.path[len(base) + 1 :]
        if info.type != pyarrow.fs.FileType.File or relative.split("/")[0] == skip:
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, target.open("wb") as out:
            while chunk := src.read(1 << 24):
                out.write(chunk)
