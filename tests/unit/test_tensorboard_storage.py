"""With --storage, rank 0's TensorBoard events reach the storage at every flush, through pyarrow
(file:// here: the code path s3:// and gs:// take), and a restarted attempt adds its own event file
to the same run."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt4all_ray.train.tensorboard import StoredSummaryWriter, open_writer


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def test_events_reach_the_storage_at_each_flush_and_a_restart_purges_redone_steps(tmp_path: Path) -> None:
    run = tmp_path / "store" / "exp" / "ray" / "tensorboard" / "abc"
    writer = open_writer(f"file://{run}", purge_step=None)
    assert isinstance(writer, StoredSummaryWriter) and not Path(writer.log_dir).is_relative_to(tmp_path)
    for step in (1, 2, 3):
        writer.add_scalar("val/loss", 4.0 - step, step)
    writer.flush()
    assert scalars(run, "val/loss") == [(1, 3.0), (2, 2.0), (3, 1.0)]  # in the storage before the end
    local = Path(writer.log_dir)
    writer.close()
    assert not local.exists()  # the local copy goes with the writer

    resumed = open_writer(f"file://{run}", purge_step=3)  # resumed from step 2: step 3 is redone
    resumed.add_scalar("val/loss", 0.5, 3)
    resumed.close()
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    assert scalars(run, "val/loss") == [(1, 3.0), (2, 2.0), (3, 0.5)]


def test_a_shared_folder_is_written_in_place(tmp_path: Path) -> None:
    writer = open_writer(str(tmp_path / "abc"), purge_step=None)
    assert not isinstance(writer, StoredSummaryWriter) and writer.log_dir == str(tmp_path / "abc")
    writer.close()
