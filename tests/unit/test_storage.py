"""--storage: checked before Ray starts; checkpoints and Tune's folders read back through pyarrow."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt4all_ray.config import SpecError
from gpt4all_ray.experiment.storage import check_storage, fetch_checkpoint, mirror, ray_root


def test_ray_root_is_the_experiment_folder_or_a_folder_named_after_it_in_the_storage(tmp_path: Path) -> None:
    exp = tmp_path / "results" / "exp1"
    assert ray_root(None, exp) == str(exp / "ray")
    assert ray_root("s3://bucket/searches/", exp) == "s3://bucket/searches/exp1/ray"


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("memory://bucket/x", "an in-memory filesystem lives inside one process"),
        ("mock://x", "an in-memory filesystem lives inside one process"),
        ("bogus://bucket/x", "pyarrow cannot open it"),
    ],
)
def test_storage_that_the_workers_cannot_share_or_open_is_refused(uri: str, says: str) -> None:
    with pytest.raises(SpecError, match=says) as err:
        check_storage(uri)
    assert f"--storage {uri}" in str(err.value) and "s3://" in str(err.value)  # what was expected


def test_storage_where_nothing_can_be_written_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SpecError, match="cannot write there"):
        check_storage(f"file://{blocker}/store")


def test_writable_storage_passes_and_keeps_no_probe(tmp_path: Path) -> None:
    check_storage(f"file://{tmp_path}/store")
    assert (tmp_path / "store").is_dir() and not any((tmp_path / "store").iterdir())


def test_checkpoints_and_tune_folders_come_back_through_the_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "store" / "exp" / "ray"
    checkpoint = root / "train" / "t1" / "checkpoint_0"
    for relative, text in {"model.safetensors": "w", "sub/config.json": "{}", "resume/engine/opt.pt": "big"}.items():
        (checkpoint / relative).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / relative).write_text(text)
    (root / "tune" / "trial_driver_1").mkdir(parents=True)
    (root / "tune" / "trial_driver_1" / "result.json").write_text("{}\n")

    best = tmp_path / "best"
    fetch_checkpoint(f"file://{root}", str(checkpoint), best, skip="resume")
    assert sorted(str(p.relative_to(best)) for p in best.rglob("*") if p.is_file()) == [
        "model.safetensors",
        "sub/config.json",
    ]
    local = tmp_path / "results" / "exp" / "ray" / "tune"
    mirror(f"file://{root}", "tune", local)
    assert (local / "trial_driver_1" / "result.json").read_text() == "{}\n"
    mirror(f"file://{root}", "tensorboard", tmp_path / "results" / "exp" / "tensorboard")  # none written: nothing
    assert not (tmp_path / "results" / "exp" / "tensorboard").exists()


def _checkpoint(folder: Path, resume_bytes: int, model_bytes: int) -> None:
    (folder / "resume" / "engine").mkdir(parents=True)
    (folder / "resume" / "engine" / "state.pt").write_bytes(b"r" * resume_bytes)
    if model_bytes:
        (folder / "model.safetensors").write_bytes(b"m" * model_bytes)


def test_dropping_resume_state_keeps_each_exported_model_and_counts_what_it_freed(tmp_path: Path) -> None:
    from gpt4all_ray.experiment.storage import drop_resume_state, storage_used

    exp = tmp_path / "exp"
    run = exp / "ray" / "train" / "abc"
    _checkpoint(run / "checkpoint_000001", 700, 100)  # the best: model exported
    _checkpoint(run / "checkpoint_000002", 700, 0)  # the latest
    _checkpoint(exp / "ray" / "train" / "other" / "checkpoint_000001", 500, 50)  # another trial: untouched
    before = storage_used(exp, str(exp / "ray"))
    assert (before.checkpoints, before.with_resume_state, before.ray_bytes) == (3, 3, 700 + 100 + 700 + 500 + 50)
    assert drop_resume_state(str(run)) == 1400
    assert (run / "checkpoint_000001" / "model.safetensors").stat().st_size == 100
    assert not (run / "checkpoint_000001" / "resume").exists() and not (run / "checkpoint_000002" / "resume").exists()
    after = storage_used(exp, str(exp / "ray"))
    assert (after.checkpoints, after.with_resume_state, after.ray_bytes) == (3, 1, 100 + 500 + 50)
    assert after.folder_bytes == 0  # Ray's storage inside the folder is not counted twice
    assert drop_resume_state(str(run)) == 0  # again: nothing left to drop


def test_only_trials_tune_saved_as_ended_lose_their_resume_state(tmp_path: Path) -> None:
    import json

    from gpt4all_ray.search.resume_state import drop_ended

    root = tmp_path / "ray"
    for trial in ("ended", "running", "failed"):
        _checkpoint(root / "train" / trial / "checkpoint_000001", 300, 10)
    (root / "tune").mkdir()
    trial_data = [
        [json.dumps({"trial_id": t, "status": s}), "{}"]
        for t, s in [("ended", "RUNNING"), ("running", "RUNNING"), ("failed", "ERROR")]
    ]
    (root / "tune" / "experiment_state-2026-12-07_01-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    newer = [
        [json.dumps({"trial_id": t, "status": s}), "{}"]
        for t, s in [("ended", "TERMINATED"), ("running", "RUNNING"), ("failed", "ERROR")]
    ]
    (root / "tune" / "experiment_state-2026-12-07_01-00-30.json").write_text(json.dumps({"trial_data": newer}))
    assert drop_ended(str(root)) == {"ended"}  # the newest saved state decides
    assert not (root / "train" / "ended" / "checkpoint_000001" / "resume").exists()
    for kept in ("running", "failed"):  # --resume continues or retries them from their checkpoints
        assert (root / "train" / kept / "checkpoint_000001" / "resume" / "engine" / "state.pt").is_file()
    assert drop_ended(str(root), skip={"ended"}) == set()


def test_an_unreadable_saved_state_drops_nothing_and_does_not_stop_the_search(tmp_path: Path) -> None:
    from gpt4all_ray.search.resume_state import drop_ended

    root = tmp_path / "ray"
    _checkpoint(root / "train" / "t" / "checkpoint_000001", 300, 10)
    (root / "tune").mkdir()
    (root / "tune" / "experiment_state-2026-12-07_01-00-00.json").write_text('{"trials": "another format"}')
    assert drop_ended(str(root)) == set()
    assert (root / "train" / "t" / "checkpoint_000001" / "resume").is_dir()
