"""Rank 0's TensorBoard writer. The experiment's tensorboard/ is a folder every node shares, or,
with --storage, a folder in the storage: there the writer writes to a local folder and copies its
event files to the storage at each flush (every evaluation) and at the end, so the logs outlive the
GPU node the autoscaler removes. The driver mirrors them next to the report when the search ends."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from torch.utils.tensorboard import SummaryWriter


def open_writer(tb_dir: str, purge_step: int | None) -> SummaryWriter:
    if "://" in tb_dir:  # a storage URI (--storage), not a shared folder
        return StoredSummaryWriter(tb_dir, purge_step=purge_step)
    return SummaryWriter(tb_dir, purge_step=purge_step)


class StoredSummaryWriter(SummaryWriter):
    """A SummaryWriter on a local folder whose event files are copied to `destination` (a storage
    URI) at every flush. A restarted attempt writes a new event file beside the earlier ones in
    the same run; purge_step hides the steps it redoes, as it does on a shared folder."""

    def __init__(self, destination: str, **kwargs: Any) -> None:
        self.destination = destination.rstrip("/")
        super().__init__(tempfile.mkdtemp(prefix="gpt4all-ray-tensorboard-"), **kwargs)

    def flush(self) -> None:
        super().flush()
        self.upload()

    def close(self) -> None:
        if self.all_writers is None:  # closed already
            return
        super().close()
        self.upload()
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def upload(self) -> None:
        """Copy the event files; a storage that fails now is said and tried again at the next flush
        (the trial's training is worth more than its curves)."""
        import pyarrow.fs

        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(self.destination)
            fs.create_dir(path, recursive=True)
            pyarrow.fs.copy_files(
                self.log_dir, path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs
            )
        except OSError as err:
            print(f"warning: TensorBoard logs not copied to {self.destination} this time: {err}", flush=True)
