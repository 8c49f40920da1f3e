"""Checkpoint validation on hand-made folders (no DeepSpeed): each rank's manifest, what
check_resumable says about every kind of damage, and which checkpoint a resume picks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpt4all_ray.train.checkpoint import (
    LoopState,
    NoUsableCheckpoint,
    check_resumable,
    load_state,
    pick_resumable,
    resume_candidates,
    save_state,
    saved_step,
    write_manifest,
)

WORLD = 2
SHARD = "resume/engine/zero_pp_rank_1_mp_rank_00_optim_states.pt"


def rank_files(rank: int) -> dict[str, int]:
    """What a rank writes under resume/ (names as DeepSpeed's ZeRO-2 writes them), with sizes."""
    files = {f"engine/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt": 4096, f"rng_rank{rank}.pt": 300}
    if rank == 0:
        files |= {"engine/mp_rank_00_model_states.pt": 8192, "latest": 6}
    return files


def make_checkpoint(folder: Path, step: int, world: int = WORLD) -> Path:
    """Each rank writes its own folder with its manifest; the ranks' folders are then merged into
    `folder`, as Ray Train (and the tests' FolderReporter) merge them."""
    for rank in range(world):
        own = folder.parent / f".{folder.name}_rank{rank}"
        for name, size in rank_files(rank).items():
            path = own / "resume" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
        if rank == 0:
            (own / "resume" / "loop_state.json").write_text(json.dumps({"global_step": step}))
        write_manifest(own, rank, world)
        shutil.copytree(own, folder, dirs_exist_ok=True)
        shutil.rmtree(own)
    return folder


def truncate(folder: Path) -> None:
    shard = folder / SHARD
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def rewrite(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def remove(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def rank1_died_writing_its_manifest(folder: Path) -> None:
    manifest = folder / "resume" / "manifest_rank1.json"
    manifest.rename(manifest.with_name("manifest_rank1.json.partial"))


def saved_before_manifests(folder: Path) -> None:
    for manifest in (folder / "resume").glob("manifest_rank*.json"):
        manifest.unlink()


DAMAGE: list[tuple[str, Callable[[Path], None], str]] = [
    ("folder deleted", remove(""), "the folder does not exist"),
    ("no resume folder", remove("resume"), "no resume/ folder"),
    ("loop state missing", remove("resume/loop_state.json"), "resume/loop_state.json missing"),
    ("loop state half-written", rewrite("resume/loop_state.json", '{"global_st'), "loop_state.json is unparsable"),
    ("loop state without a step", rewrite("resume/loop_state.json", "{}"), "loop_state.json is unparsable"),
    ("saved before manifests existed", saved_before_manifests, "saved before checkpoints had manifests"),
    ("rank 1's manifest missing", remove("resume/manifest_rank1.json"), "manifest_rank1.json missing: rank 1"),
    ("rank 1 died writing its manifest", rank1_died_writing_its_manifest, "manifest_rank1.json missing"),
    ("rank 0's manifest missing", remove("resume/manifest_rank0.json"), "manifest_rank0.json missing: rank 0"),
    ("manifest unparsable", rewrite("resume/manifest_rank1.json", "{"), "manifest_rank1.json is unreadable"),
    ("manifest without files", rewrite("resume/manifest_rank1.json", "[]"), "manifest_rank1.json has no file list"),
    ("manifest without world size", rewrite("resume/manifest_rank0.json", '{"files": {}}'), "no valid world_size"),
    ("shard truncated", truncate, f"{SHARD} is 2048 bytes, expected 4096"),
    ("shard deleted", remove(SHARD), f"{SHARD} missing"),
    ("rng state deleted", remove("resume/rng_rank0.pt"), "resume/rng_rank0.pt missing"),
]


def test_a_complete_checkpoint_passes_and_each_rank_lists_its_own_files(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "step-8", step=8)
    assert check_resumable(folder) is None and saved_step(folder) == 8
    rank1 = json.loads((folder / "resume" / "manifest_rank1.json").read_text())
    assert rank1["world_size"] == WORLD and rank1["files"] == {f"resume/{k}": v for k, v in rank_files(1).items()}
    assert "resume/loop_state.json" in json.loads((folder / "resume" / "manifest_rank0.json").read_text())["files"]
    assert not list(folder.rglob("*.partial"))


@pytest.mark.parametrize(("damage", "reason"), [(d, r) for _, d, r in DAMAGE], ids=[n for n, _, _ in DAMAGE])
def test_each_kind_of_damage_is_named(tmp_path: Path, damage: Callable[[Path], None], reason: str) -> None:
    folder = make_checkpoint(tmp_path / "step-8", step=8)
    damage(folder)
    problem = check_resumable(folder)
    assert problem is not None and reason in problem
    assert "\n" not in problem  # one line


def test_a_manifest_from_a_smaller_world_does_not_pass_for_a_larger_one(tmp_path: Path) -> None:
    # Rank 0 says two ranks saved: a checkpoint with rank 0's files alone is incomplete.
    folder = make_checkpoint(tmp_path / "step-8", step=8, world=1)
    manifest = folder / "resume" / "manifest_rank0.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"world_size": 2}))
    assert check_resumable(folder) == "resume/manifest_rank1.json missing: rank 1 never finished saving"


def test_candidates_are_the_handed_folder_then_older_siblings_newest_first(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for step in (4, 12, 8, 16, 20):
        make_checkpoint(checkpoints / f"step-{step}", step)
    (checkpoints / "unreadable" / "resume").mkdir(parents=True)
    (checkpoints / "not-a-checkpoint").mkdir()
    (checkpoints / "stray.json").write_text("{}")
    # step-20 is newer than the one handed over: never handed to a resume, so never a fallback.
    names = [p.name for p in resume_candidates(checkpoints / "step-16")]
    assert names == ["step-16", "step-12", "step-8", "step-4", "unreadable"]
    # A handed folder with no readable step (deleted, say): every sibling is a candidate.
    names = [p.name for p in resume_candidates(checkpoints / "step-24")]
    assert names == ["step-24", "step-20", "step-16", "step-12", "step-8", "step-4", "unreadable"]


def test_a_valid_handed_checkpoint_is_used_as_it_is(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for step in (4, 8):
        make_checkpoint(checkpoints / f"step-{step}", step)
    point = pick_resumable(checkpoints / "step-8")
    assert (point.folder.name, point.step, point.skipped, point.fallback_lines()) == ("step-8", 8, [], [])


@pytest.mark.parametrize(("damage", "reason"), [(d, r) for _, d, r in DAMAGE], ids=[n for n, _, _ in DAMAGE])
def test_a_broken_latest_falls_back_to_the_newest_valid_older_one(
    tmp_path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    checkpoints = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        make_checkpoint(checkpoints / f"step-{step}", step)
    truncate(checkpoints / "step-8")  # the next older one is broken too: skipped, said so
    latest = checkpoints / "step-12"
    damage(latest)
    point = pick_resumable(latest)
    assert (point.folder.name, point.step) == ("step-4", 4)
    assert [p.name for p, _ in point.skipped] == ["step-12", "step-8"]
    lines = point.fallback_lines()
    assert len(lines) == 2 and reason in lines[0] and "is 2048 bytes, expected 4096" in lines[1]
    assert lines[0].startswith(f"checkpoint {latest} is not usable (")
    assert lines[0].endswith(f"resuming from {checkpoints / 'step-4'} (step 4) instead")


def test_no_valid_checkpoint_is_an_error_naming_every_candidate(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for step in (4, 8):
        saved_before_manifests(make_checkpoint(checkpoints / f"step-{step}", step))
    with pytest.raises(NoUsableCheckpoint) as error:
        pick_resumable(checkpoints / "step-12")  # deleted: only its siblings are left
    message = str(error.value)
    for name, reason in [("step-12", "does not exist"), ("step-8", "manifests"), ("step-4", "manifests")]:
        assert f"{checkpoints / name} (" in message and reason in message


def test_load_state_refuses_a_broken_checkpoint_before_touching_the_engine(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "step-8", step=8)
    truncate(folder)
    with pytest.raises(NoUsableCheckpoint, match="is 2048 bytes, expected 4096"):
        load_state(None, folder, rank=0)


class FileWritingEngine:
    """Stands in for the DeepSpeed engine's save (its checkpoint files) in a one-rank save."""

    def save_checkpoint(self, path: str, tag: str, exclude_frozen_parameters: bool) -> None:
        shard = Path(path) / tag / "mp_rank_00_model_states.pt"
        shard.parent.mkdir(parents=True)
        shard.write_bytes(b"w" * 1000)
        (Path(path) / "latest").write_text(tag)


def test_save_state_ends_with_a_manifest_of_everything_it_wrote(tmp_path: Path) -> None:
    engine: Any = FileWritingEngine()
    save_state(engine, LoopState(global_step=7), tmp_path, rank=0)
    manifest = json.loads((tmp_path / "resume" / "manifest_rank0.json").read_text())
    written = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "resume").rglob("*") if p.is_file()}
    assert set(manifest["files"]) == written - {"resume/manifest_rank0.json"}
    assert manifest["world_size"] == 1 and manifest["files"]["resume/engine/mp_rank_00_model_states.pt"] == 1000
    assert check_resumable(tmp_path) is None and saved_step(tmp_path) == 7


def test_a_resume_missing_a_trained_weight_is_refused_before_deepspeed_loads_it(tmp_path: Path) -> None:
    import torch

    from gpt4all_ray.train.checkpoint import ENGINE_TAG, NoUsableCheckpoint, _check_trained_weights_saved

    module = torch.nn.Linear(2, 2)
    module.bias.requires_grad_(False)  # frozen, as LoRA's base: not saved
    engine: Any = type("Engine", (), {"module": module})()
    states = tmp_path / "resume" / ENGINE_TAG / "mp_rank_00_model_states.pt"
    states.parent.mkdir(parents=True)
    torch.save({"module": {"weight": module.weight.detach()}}, states)
    _check_trained_weights_saved(engine, tmp_path / "resume")  # every trained weight is there
    torch.save({"module": {"other.weight": module.weight.detach()}}, states)  # renamed, as a library upgrade might
    with pytest.raises(NoUsableCheckpoint, match="trained weights missing from the checkpoint: weight"):
        _check_trained_weights_saved(engine, tmp_path / "resume")
