"""The tokenized data cache (data/cache.py): built once, mapped after, rebuilt when any input that
changes it changes, never used when it does not match its key; and the ranks' shares of an epoch."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import load_split
from gpt4all_ray.data.cache import BUILDS, MANIFEST, PreparedData, prepare
from gpt4all_ray.data.encode import TooLong, encode_rows
from gpt4all_ray.data.tokenizer import load_tokenizer
from gpt4all_ray.train.loop import rows_of_step
from gpt4all_ray.train.probes import probe_rows

SMALL = TrialConfig(data_rows=400)


def builds(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / BUILDS).read_text().splitlines()]


def pairs(examples: object) -> list[tuple[list[int], list[int]]]:
    return [(e.input_ids, e.labels) for e in examples]  # type: ignore[attr-defined]


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FILE_ROWS = [
    {"prompt": f"question {i} " + "word " * (i % 40), "response": f"answer {i} " * (1 + i % 7), "source": "ab"[i % 2]}
    for i in range(300)
]


@pytest.mark.parametrize("collate", ["longest", "pack"])  # collate is not a key input: same build
@pytest.mark.parametrize("max_length,length_policy", [(128, "truncate"), (64, "drop"), (1024, "truncate")])
def test_the_mapped_build_holds_what_the_rows_encode_to_in_memory(
    tmp_path: Path, max_length: int, length_policy: str, collate: str
) -> None:
    cfg = dataclasses.replace(SMALL, max_length=max_length, length_policy=length_policy, collate=collate)
    split = load_split(cfg)
    tokenizer = load_tokenizer(cfg, split)
    train, train_report = encode_rows(split.train, tokenizer, max_length, length_policy)
    val, _ = encode_rows(split.val, tokenizer, max_length, length_policy)

    built = prepare(cfg, tmp_path)
    assert built.built_here and built.train.ids.dtype == np.uint16  # a vocabulary of 1,024
    assert pairs(built.train) == pairs(train) and pairs(built.val) == pairs(val)
    assert built.encoding == train_report and built.report == split.report
    assert built.train.tokens == sum(len(e.input_ids) for e in train)
    assert built.probe_rows(16, cfg.data_seed) == probe_rows(split.val, 16, cfg.data_seed)
    assert built.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert (built.tokenizer.pad_token_id, built.tokenizer.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
    )


def test_a_second_trial_maps_the_first_build_and_reads_the_same(tmp_path: Path) -> None:
    first = prepare(SMALL, tmp_path)
    again = prepare(dataclasses.replace(SMALL, learning_rate=0.5, seed=3, epochs=1), tmp_path)  # not key inputs
    assert first.built_here and not again.built_here
    assert again.folder == first.folder and len(builds(tmp_path)) == 1
    assert isinstance(again.train.ids, np.memmap)  # mapped, not read into memory
    assert pairs(again.train) == pairs(first.train)


def _changed_inputs(tmp_path: Path) -> dict[str, tuple[TrialConfig, TrialConfig]]:
    data = write_rows(tmp_path / "rows.jsonl", FILE_ROWS)
    on_file = TrialConfig(data=str(data))
    return {
        "data_rows": (SMALL, dataclasses.replace(SMALL, data_rows=401)),
        "data_seed": (SMALL, dataclasses.replace(SMALL, data_seed=1)),
        "val_fraction": (SMALL, dataclasses.replace(SMALL, val_fraction=0.1)),
        "max_length": (SMALL, dataclasses.replace(SMALL, max_length=96)),
        "length_policy": (SMALL, dataclasses.replace(SMALL, length_policy="drop")),
        "model": (SMALL, dataclasses.replace(SMALL, model="tiny-llama")),
        "exclude_sources": (on_file, dataclasses.replace(on_file, exclude_sources="b")),
        "train_only_sources": (on_file, dataclasses.replace(on_file, train_only_sources="a")),
        "prompt_column": (on_file, dataclasses.replace(on_file, prompt_column="response", response_column="prompt")),
    }


@pytest.mark.parametrize(
    "changed",
    [
        "data_rows",
        "data_seed",
        "val_fraction",
        "max_length",
        "length_policy",
        "model",
        "exclude_sources",
        "train_only_sources",
        "prompt_column",
    ],
)
def test_any_key_input_changed_makes_a_new_build(tmp_path: Path, changed: str) -> None:
    before, after = _changed_inputs(tmp_path)[changed]
    first, second = prepare(before, tmp_path / "cache"), prepare(after, tmp_path / "cache")
    assert first.built_here and second.built_here and first.folder != second.folder
    assert len(builds(tmp_path / "cache")) == 2


def test_a_rewritten_data_file_makes_a_new_build(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "rows.jsonl", FILE_ROWS)
    cfg = TrialConfig(data=str(data))
    first = prepare(cfg, tmp_path / "cache")
    rewritten = [dict(row, response=row["response"].upper()) for row in FILE_ROWS]  # same size, other content
    write_rows(data, rewritten)
    second = prepare(cfg, tmp_path / "cache")
    assert second.built_here and second.folder != first.folder
    assert pairs(second.train) == pairs(encode_rows(load_split(cfg).train, second.tokenizer, cfg.max_length)[0])


def test_a_changed_model_tokenizer_makes_a_new_build(tmp_path: Path) -> None:
    model = tmp_path / "model"
    tokenizer = load_tokenizer(SMALL, load_split(SMALL))
    tokenizer.save_pretrained(model)
    cfg = TrialConfig(model=str(model), data_rows=400)
    first = prepare(cfg, tmp_path / "cache")
    assert first.built_here and first.tokenizer.get_vocab() == tokenizer.get_vocab()
    tokenizer.add_tokens([" exactly:"])  # one more token, in every copy row: the rows encode shorter
    tokenizer.save_pretrained(model)
    second = prepare(cfg, tmp_path / "cache")
    assert second.built_here and second.folder != first.folder
    assert second.train.tokens < first.train.tokens


@pytest.mark.parametrize(
    "damage", ["cut_ids", "edited_manifest", "no_manifest", "no_offsets", "no_val_rows", "no_tokenizer", "bad_offsets"]
)
def test_a_build_that_does_not_match_its_key_is_rebuilt_not_used(tmp_path: Path, damage: str) -> None:
    first = prepare(SMALL, tmp_path)
    ids = first.folder / "train.ids.bin"
    if damage == "cut_ids":
        ids.write_bytes(ids.read_bytes()[:-2])
    elif damage == "edited_manifest":
        manifest = json.loads((first.folder / MANIFEST).read_text())
        manifest["inputs"]["max_length"] += 1
        (first.folder / MANIFEST).write_text(json.dumps(manifest))
    elif damage == "no_manifest":
        (first.folder / MANIFEST).unlink()
    elif damage == "no_offsets":
        (first.folder / "val.offsets.npy").unlink()
    elif damage == "no_val_rows":
        (first.folder / "val_rows.jsonl").unlink()
    elif damage == "no_tokenizer":
        (first.folder / "tokenizer" / "tokenizer.json").unlink()
    else:  # the same size, unreadable
        offsets = first.folder / "train.offsets.npy"
        offsets.write_bytes(b"x" * offsets.stat().st_size)
    again = prepare(SMALL, tmp_path)
    assert again.built_here and again.folder == first.folder and len(builds(tmp_path)) == 2
    assert pairs(again.train) == pairs(first.train)


def test_a_build_that_fails_leaves_no_folder_behind(tmp_path: Path) -> None:
    from gpt4all_ray.data import UnknownSource

    with pytest.raises(UnknownSource, match="no row has source 'typo'"):
        prepare(dataclasses.replace(SMALL, exclude_sources="typo"), tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()] and not (tmp_path / BUILDS).exists()


def test_workers_starting_together_build_once(tmp_path: Path) -> None:
    results: list[PreparedData] = []
    workers = [threading.Thread(target=lambda: results.append(prepare(SMALL, tmp_path))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 3 and sum(r.built_here for r in results) == 1 and len(builds(tmp_path)) == 1
    assert len({r.folder for r in results}) == 1


def test_length_policy_raise_names_the_part_and_row_and_leaves_no_build(tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, max_length=48, length_policy="raise")
    with pytest.raises(TooLong, match=r"^(train|validation) row \d+ "):
        prepare(cfg, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_over_an_epoch_the_ranks_shares_are_disjoint_and_cover_every_whole_global_batch(world: int) -> None:
    rows, global_batch = 1000, 24
    order = list(np.random.default_rng(world).permutation(rows))
    steps = rows // global_batch
    seen: list[int] = []
    for step in range(steps):
        shares = [rows_of_step(order, step, global_batch, rank, world) for rank in range(world)]
        # The global batch is the same whatever the number of workers.
        assert sorted(r for share in shares for r in share) == sorted(
            order[step * global_batch : (step + 1) * global_batch]
        )
        seen += [r for share in shares for r in share]
    assert len(seen) == len(set(seen)) == steps * global_batch  # no row repeated
    assert set(seen) == set(order[: steps * global_batch])  # none skipped but the last partial batch
