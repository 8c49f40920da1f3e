"""Reading instruction rows from files: every format, column mapping, source filters, and an
error that names the file, line or row for input that does not fit the schema."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all_ray.config import TrialConfig
from gpt4all_ray.data import load_split
from gpt4all_ray.data.sources import Columns, DataError, load_rows
from tests.unit.cli import run_tune

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
GPTEACHER = SHARED / "gpteacher-codegen-instruct.json"
ROWS = [
    {"prompt": "Say hi.", "response": 'hi\nthere, "you"', "source": "chat"},  # newline, comma, quotes
    {"prompt": "Add 2 and 3.", "response": "5", "source": "p3"},
    {"prompt": "Reverse 'ab'.", "response": "ba", "source": "chat"},
]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        import csv

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    assert load_rows(write(tmp_path / f"d{suffix}", ROWS)) == ROWS


def test_folder_of_files_and_source_defaults_to_file_name(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", ROWS[:1])
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.csv", [{"prompt": "Q", "response": "A"}])
    (tmp_path / "notes.txt").write_text("not data")
    rows = load_rows(tmp_path)
    assert rows == [ROWS[0], {"prompt": "Q", "response": "A", "source": "b"}]


def test_column_mapping_joins_input_to_the_prompt(tmp_path: Path) -> None:
    path = write(
        tmp_path / "alpaca.json",
        [
            {"instruction": "Area of a rectangle?", "input": "w 5, h 8", "output": "40"},
            {"instruction": "Say hi.", "input": "", "output": "hi"},
        ],
    )
    rows = load_rows(path, Columns(prompt="instruction", response="output", input="input"))
    assert [r["prompt"] for r in rows] == ["Area of a rectangle?\nw 5, h 8", "Say hi."]
    assert {r["source"] for r in rows} == {"alpaca"}


def test_source_filters_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", ROWS * 20)
    base = TrialConfig(data=str(path), val_fraction=0.5)
    excluded = load_split(dataclasses.replace(base, exclude_sources="p3"))
    assert excluded.report.dropped["source_filtered"][:2] == [1, 4]
    assert len(excluded.report.dropped["source_filtered"]) == 20
    assert all(r["source"] == "chat" for r in excluded.train + excluded.val)
    included = load_split(dataclasses.replace(base, include_sources="p3"))
    assert all(r["source"] == "p3" for r in included.train + included.val)
    for data in (excluded, included):  # nothing is lost: in = kept + dropped, kept = train + val
        report = data.report
        assert report.rows_in == 60 == report.rows_kept + sum(len(v) for v in report.dropped.values())
        assert report.rows_kept == report.train_rows + report.val_rows


@pytest.mark.parametrize("key", ["include_sources", "exclude_sources", "train_only_sources"])
def test_a_source_filter_naming_a_source_no_row_has_is_refused_with_those_present(key: str, tmp_path: Path) -> None:
    from gpt4all_ray.data import UnknownSource

    path = write(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(UnknownSource, match="no row has source 'P3'; the sources present: 'chat', 'p3'") as err:
        load_split(TrialConfig(data=str(path), **{key: "chat, P3"}))
    assert err.value.key == key


BAD = [
    ("d.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "a", \n', "d.jsonl:2: not valid JSON"),
    (
        "d.jsonl",
        b'{"prompt": "a"}\n',
        "d.jsonl:1: missing column(s) 'response' (or a conversation in 'messages'); has 'prompt'",
    ),
    ("d.jsonl", b'["a", "b"]\n', "d.jsonl:1: expected an object with columns, got list"),
    ("d.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n', "d.jsonl:2: invalid UTF-8"),
    ("d.jsonl", b"  \n", "d.jsonl: empty file"),
    ("d.json", b'{"prompt": "a"}', "d.json: expected a JSON list of objects, got dict"),
    ("d.csv", b"prompt,answer\nq,a\n", "d.csv:2: missing column(s) 'response'"),
    ("d.parquet", b"not parquet at all", "d.parquet: not a readable Parquet file"),
    ("d.txt", b"x", "unsupported file type '.txt'"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD, ids=[b[2].split(": ", 1)[-1][:30] for b in BAD])
def test_unreadable_input_names_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert message in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no .jsonl, .json, .csv, .parquet files in this folder"):
        load_rows(tmp_path)


def test_cli_refuses_a_malformed_data_file_before_ray(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{oops}\n')
    space = tmp_path / "s.yaml"
    space.write_text(f"fixed: {{data: '{data}'}}\nsearch: {{learning_rate: {{loguniform: [1.0e-4, 1.0e-2]}}}}\n")
    proc = run_tune(space, tmp_path / "results")
    assert proc.returncode == 2
    assert f"{space}: fixed.data: {data}:2: not valid JSON" in proc.stderr
    assert "ray never imported" in proc.stdout


@pytest.mark.skipif(not GPTEACHER.is_file(), reason=f"real data not present at {GPTEACHER}")
def test_real_gpteacher_rows() -> None:
    raw = json.loads(GPTEACHER.read_text())
    rows = load_rows(GPTEACHER, Columns(prompt="instruction", response="response", input="input"))
    assert len(rows) == len(raw) == 4535
    with_input = next(i for i, r in enumerate(raw) if r["input"].strip())
    assert rows[with_input]["prompt"] == raw[with_input]["instruction"] + "\n" + raw[with_input]["input"]
    cfg = TrialConfig(data=str(GPTEACHER), prompt_column="instruction", input_column="input")
    data = load_split(cfg)
    report = data.report
    assert report.rows_in == 4535 == report.rows_kept + sum(len(v) for v in report.dropped.values())
    assert report.train_rows + report.val_rows == report.rows_kept
    keys = lambda rs: {(r["prompt"], r["response"]) for r in rs}  # noqa: E731
    assert not keys(data.train) & keys(data.val)


def test_hub_name_offline_is_a_clear_error() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "gpt4all_ray.data", "--data", "hf:tatsu-lab/alpaca"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert "error: hf:tatsu-lab/alpaca: could not load this Hugging Face dataset" in proc.stderr
    assert "download it elsewhere and pass a local file or folder" in proc.stderr


def test_hub_loader_reads_rows_through_datasets(tmp_path: Path) -> None:
    # `datasets.load_dataset` also takes a local folder: the same code path as a Hub name, offline.
    write(tmp_path / "train.jsonl", ROWS)
    rows = load_rows(f"hf:{tmp_path}")
    assert rows == ROWS


SELF_INSTRUCT = SHARED / "self-instruct-user-oriented-instructions.jsonl"


def test_explode_a_list_column(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        json.dumps(
            {"instruction": "Fix it.", "instances": [{"input": "a", "output": "A"}, {"input": "", "output": "B"}]}
        )
        + "\n"
    )
    columns = Columns(prompt="instruction", response="output", input="input", explode="instances")
    assert [(r["prompt"], r["response"]) for r in load_rows(path, columns)] == [("Fix it.\na", "A"), ("Fix it.", "B")]
    path.write_text(json.dumps({"instruction": "Fix it.", "instances": "oops"}) + "\n")
    with pytest.raises(DataError, match=r"tasks.jsonl:1: column 'instances' must hold a list of objects"):
        load_rows(path, columns)


@pytest.mark.skipif(not SELF_INSTRUCT.is_file(), reason=f"real data not present at {SELF_INSTRUCT}")
def test_real_self_instruct_tasks_explode_into_rows() -> None:
    tasks = [json.loads(line) for line in SELF_INSTRUCT.read_text().splitlines() if line.strip()]
    columns = Columns(
        prompt="instruction", response="output", input="input", source="motivation_app", explode="instances"
    )
    rows = load_rows(SELF_INSTRUCT, columns)
    assert len(tasks) == 252
    assert len(rows) == sum(len(t["instances"]) for t in tasks)
    assert rows[0]["source"] == tasks[0]["motivation_app"]
    assert rows[0]["response"] == tasks[0]["instances"][0]["output"]


def test_train_only_sources_never_reach_validation(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "response": f"a{i}", "source": "chat" if i % 2 else "keep"} for i in range(100)]
    path = write(tmp_path / "d.jsonl", rows)
    data = load_split(TrialConfig(data=str(path), val_fraction=0.2, train_only_sources="keep"))
    assert {r["source"] for r in data.val} == {"chat"} and len(data.val) == 10  # 20% of the 50 eligible
    assert sum(r["source"] == "keep" for r in data.train) == 50
    assert data.report.train_rows + data.report.val_rows == 100
