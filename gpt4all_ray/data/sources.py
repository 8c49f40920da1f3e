"""Instruction rows from files: JSONL, JSON (a list of objects), CSV, Parquet, or a folder of them.

Columns are mapped to GPT4All's fields (prompt, response, source); an optional input column is
joined to the prompt with a newline, as GPT4All and Alpaca do. A row with a messages column is a
conversation instead (role/content turns, as chat data sets hold them). Anything that cannot be
read as that schema is an error naming the file, the line or row, and what was expected.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all_ray.config import HUB_PREFIX, TrialConfig
from gpt4all_ray.data.synthetic import Row

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """Input that cannot be read as the configured schema."""


@dataclass(frozen=True)
class Columns:
    prompt: str = "prompt"
    response: str = "response"
    source: str = "source"
    """Missing in a file: the file's name stands in as the source."""
    input: str = ""
    """Optional column joined to the prompt (Alpaca's and GPTeacher's `input`); "" for none."""
    explode: str = ""
    """A column holding a list of objects, each of which becomes a row with the parent's other
    fields (self-instruct's `instances`); "" for none."""
    messages: str = "messages"
    """A column holding a conversation: a list of {role, content} turns (role system, user or
    assistant), ending with an assistant turn; a row that has it needs no prompt or response."""

    @classmethod
    def of(cls, cfg: TrialConfig) -> Columns:
        return cls(
            cfg.prompt_column,
            cfg.response_column,
            cfg.source_column,
            cfg.input_column,
            cfg.explode_column,
            cfg.messages_column,
        )


ROLES = ("system", "user", "assistant")


def conversation(value: Any, where: str, column: str) -> list[dict[str, str]]:
    """A messages column's turns, checked; a JSON string (a CSV cell) is read first."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: column {column!r} is text that is not JSON ({err.msg})") from None
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: column {column!r} must hold a non-empty list of {{role, content}} turns")
    turns = []
    for k, turn in enumerate(value):
        at = f"{where}: {column}[{k}]"
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"{at}: expected {{role: {' | '.join(ROLES)}, content: text}}, got {turn!r}")
        if turn["role"] == "system" and k:
            raise DataError(f"{at}: a system turn may only come first")
        turns.append({"role": turn["role"], "content": turn["content"]})
    roles = [t["role"] for t in turns]
    first = 1 if roles[0] == "system" else 0
    for k in range(first, len(roles)):
        expected = ("user", "assistant")[(k - first) % 2]
        if roles[k] != expected:
            # One user turn before each answer: the prompt capped before the first is that turn.
            article = "an" if expected == "assistant" else "a"
            raise DataError(
                f"{where}: {column}[{k}]: expected {article} {expected} turn (turns alternate user, assistant "
                f"after an optional system turn), got {roles[k]}"
            )
    if roles[-1] != "assistant":
        raise DataError(f"{where}: column {column!r} must end with an assistant turn (the answer to learn)")
    return turns


def data_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return [path]


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 at byte {err.start}") from None


def records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for every row of one file; `where` is "file:line" or "file row N"."""
    if path.suffix == ".jsonl":
        for number, line in enumerate(_text(path).splitlines(), start=1):
            if not line.strip():
                continue  # a blank line is not a row
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg}); expected one object per line") from None
            yield f"{path}:{number}", record
    elif path.suffix == ".json":
        try:
            data = json.loads(_text(path))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for number, record in enumerate(data, start=1):
            yield f"{path} row {number}", record
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_text(path), newline=""))  # keeps newlines inside quoted fields
        for record in reader:
            yield f"{path}:{reader.line_num}", record
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 (pyarrow raises several types for unreadable files)
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        for number, record in enumerate(table.to_pylist(), start=1):
            yield f"{path} row {number}", record


def hub_dataset(name: str) -> Any:
    """The `train` split of a Hugging Face `datasets` name (`hf:tatsu-lab/alpaca`)."""
    import datasets

    try:
        return datasets.load_dataset(name, split="train")
    except Exception as err:  # noqa: BLE001 (offline, unknown name, no train split: all say the same to a user)
        raise DataError(
            f"{HUB_PREFIX}{name}: could not load this Hugging Face dataset ({type(err).__name__}: {err}); "
            "without access to the Hub, download it elsewhere and pass a local file or folder"
        ) from None


def hub_records(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a Hub data set's `train` split, each with where it came from."""
    dataset = hub_dataset(name)
    for number, record in enumerate(dataset, start=1):
        yield f"{HUB_PREFIX}{name} row {number}", record


def _exploded(file_records: Iterator[tuple[str, dict[str, Any]]], column: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, record in file_records:
        if not column:
            yield where, record
            continue
        items = record.get(column) if isinstance(record, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise DataError(f"{where}: column {column!r} must hold a list of objects to explode")
        for k, item in enumerate(items, start=1):
            yield f"{where} {column}[{k}]", {**record, **item}


def load_rows(path: str | Path, columns: Columns = Columns()) -> list[Row]:
    """All rows of a file, a folder or a Hub data set as GPT4All rows. Type problems inside a field
    (a number where text belongs) are left for cleaning, which counts them; a missing column is
    an error."""
    rows: list[Row] = []
    needed = [c for c in (columns.prompt, columns.response, columns.input) if c]
    name = str(path)
    if name.startswith(HUB_PREFIX):
        sources = [(name.removeprefix(HUB_PREFIX).replace("/", "_"), hub_records(name.removeprefix(HUB_PREFIX)))]
    else:
        sources = [(file.stem, records(file)) for file in data_files(Path(path))]
    for stem, file_records in sources:
        for where, record in _exploded(file_records, columns.explode):
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected an object with columns, got {type(record).__name__}")
            source = str(record.get(columns.source) or stem)
            if columns.messages and record.get(columns.messages) not in (None, ""):  # "": an empty CSV cell
                turns = conversation(record[columns.messages], where, columns.messages)
                last_user = next(t["content"] for t in reversed(turns) if t["role"] == "user")
                rows.append(
                    {"prompt": last_user, "response": turns[-1]["content"], "source": source, "messages": turns}
                )
                continue
            missing = [c for c in needed if c not in record]
            if missing:
                alternative = f" (or a conversation in {columns.messages!r})" if columns.messages else ""
                raise DataError(
                    f"{where}: missing column(s) {', '.join(map(repr, missing))}{alternative}; "
                    f"has {', '.join(map(repr, record))}"
                )
            prompt, extra = record[columns.prompt], record.get(columns.input) if columns.input else None
            if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
                prompt = f"{prompt}\n{extra}"
            rows.append({"prompt": prompt, "response": record[columns.response], "source": source})
    return rows
