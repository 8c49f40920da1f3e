"""The tokenized data set, built once per experiment and mapped by every trial and restart.

At GPT4All's size (400-800k rows of ~460 tokens) loading, cleaning and tokenizing the rows takes
minutes and gigabytes of Python objects; done by every worker of every trial and every restart,
it costs GPU-hours before the first step. Here it is done once: the cleaned, split, tokenized
rows are written as flat token arrays (nanoGPT's .bin files: uint16 when the vocabulary fits,
else int32) with each row's offset and its learned spans (the answers). A worker maps them and
reads only the rows it trains on; the labels are the ids inside the spans, so they are not stored.

A build lives in a folder named by a hash of everything that changes it (see `key_inputs`): the
data files' content, the columns and filters, the split, the tokenizer (its chat template
too), the prompt format, max_length and the length policy, and this package's data code. A folder whose manifest does
not match its inputs, or whose arrays do not match the manifest, is rebuilt, never used. Builds
take a file lock, so the workers of a trial that needs a new build (a searched max_length) wait
for one of them instead of all building it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from gpt4all_ray.config import EMBEDDED_DATA, HUB_PREFIX, TrialConfig
from gpt4all_ray.data.encode import (
    PROMPT_HEAD,
    RESPONSE_HEAD,
    EncodeReport,
    Example,
    FormatError,
    TooLong,
    encoded,
    example,
)
from gpt4all_ray.data.pipeline import DataReport
from gpt4all_ray.data.synthetic import Row
from gpt4all_ray.data.tokenizer import is_builtin, load_tokenizer

FORMAT = 2  # 2: learned spans (multi-turn answers) in place of one prompt length a row
MANIFEST = "manifest.json"
BUILDS = "builds.jsonl"
"""One line per build under a root (its key, host, process, seconds): how often the data was tokenized."""
TOKENIZER = "tokenizer"
VAL_ROWS = "val_rows.jsonl"
VAL_ROW_OFFSETS = "val_rows.offsets.npy"
PARTS = ("train", "val")
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "gpt4all_ray_data"
"""Builds of a loop run outside a search (torchrun, tests); a search keeps its own in the
experiment folder."""
# The data code whose output the cache stores: a change to any of them makes a new build.
CODE = ("cache.py", "encode.py", "pipeline.py", "sources.py", "synthetic.py", "tokenizer.py", "__init__.py")


class CacheError(RuntimeError):
    """A cache folder that cannot be used as it is."""


class TokenizedRows(Sequence[Example]):
    """One part's rows as examples, read from the mapped arrays only when indexed."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, spans: np.ndarray, span_offsets: np.ndarray) -> None:
        self.ids, self.offsets, self.spans, self.span_offsets = ids, offsets, spans, span_offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        ids = self.ids[int(self.offsets[index]) : int(self.offsets[index + 1])].tolist()
        spans = self.spans[int(self.span_offsets[index]) : int(self.span_offsets[index + 1])].tolist()
        return example(ids, spans)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])


@dataclass(frozen=True)
class PreparedData:
    """What a worker trains and evaluates on, from one build."""

    folder: Path
    tokenizer: Any
    train: TokenizedRows
    val: TokenizedRows
    report: DataReport
    """Rows read, dropped by reason, split."""
    encoding: EncodeReport
    """The training rows' encoding: truncated, dropped as too long, EOS kept."""
    built_here: bool
    """This process built it (False: it mapped an earlier build)."""

    def val_rows(self, indices: Sequence[int]) -> list[Row]:
        """Validation rows as text (the generation probes' prompts and answers), read by index
        among all validation rows (those dropped as too long included)."""
        offsets = np.load(self.folder / VAL_ROW_OFFSETS, mmap_mode="r")
        rows = []
        with (self.folder / VAL_ROWS).open("rb") as f:
            for i in indices:
                f.seek(int(offsets[i]))
                rows.append(json.loads(f.read(int(offsets[i + 1] - offsets[i]))))
        return rows

    def probe_rows(self, n: int, seed: int) -> list[Row]:
        """The same sample as probes.probe_rows(validation rows, n, seed), read without loading
        the rest: random.sample picks by position from the population's length alone."""
        count = self.report.val_rows
        return self.val_rows(random.Random(seed).sample(range(count), min(n, count)))


def prepare(cfg: TrialConfig, root: Path) -> PreparedData:
    """The build for `cfg` under `root`: mapped if a valid one is there, else built first."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = None if is_builtin(cfg) else load_tokenizer(cfg, None)
    inputs = key_inputs(cfg, tokenizer, root)
    folder = root / digest(inputs)
    if (mapped := _open(folder, inputs, tokenizer)) is not None:
        return mapped
    with _locked(folder.with_suffix(".lock")):
        if (mapped := _open(folder, inputs, tokenizer)) is not None:  # another process built it meanwhile
            return mapped
        if folder.exists():
            shutil.rmtree(folder)  # does not match its key: never used as it is
        seconds = _build(cfg, folder, inputs, tokenizer)
        line = {"key": folder.name, "host": socket.gethostname(), "pid": os.getpid(), "seconds": round(seconds, 3)}
        with (root / BUILDS).open("a") as log:
            log.write(json.dumps(line) + "\n")
    built = _open(folder, inputs, tokenizer)
    if built is None:
        raise CacheError(f"{folder}: the build just written does not read back")
    return dataclasses.replace(built, built_here=True)


def key_inputs(cfg: TrialConfig, tokenizer: Any, root: Path) -> dict[str, Any]:
    """Everything the build depends on. `tokenizer`: the model's own (None for a built-in model,
    whose tokenizer the build trains from the rows, so the rows' inputs cover it)."""
    data: dict[str, Any]
    if cfg.data == EMBEDDED_DATA:
        data = {"embedded": True, "rows": cfg.data_rows}
    elif cfg.data.startswith(HUB_PREFIX):
        from gpt4all_ray.data.sources import hub_dataset

        name = cfg.data.removeprefix(HUB_PREFIX)
        data = {"hub": name, "fingerprint": hub_dataset(name)._fingerprint}
    else:
        from gpt4all_ray.data.sources import data_files

        data = {"files": {str(f.resolve()): file_digest(f, root / "digests") for f in data_files(Path(cfg.data))}}
    columns = ("prompt_column", "response_column", "source_column", "input_column", "explode_column", "messages_column")
    return {
        "format": FORMAT,
        "code": _code_digest(),
        "data": data,
        "columns": {c: getattr(cfg, c) for c in columns},
        "sources": {k: getattr(cfg, k) for k in ("include_sources", "exclude_sources", "train_only_sources")},
        "split": {"val_fraction": cfg.val_fraction, "data_seed": cfg.data_seed},
        "tokenizer": {"builtin": cfg.model} if tokenizer is None else tokenizer_fingerprint(tokenizer),
        "prompt_format": cfg.prompt_format,
        "template": [PROMPT_HEAD, RESPONSE_HEAD],
        "max_length": cfg.max_length,
        "length_policy": cfg.length_policy,
    }


def digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def file_digest(path: Path, memo: Path) -> str:
    """The file's content hash. It is remembered by (path, size, modification time, inode), so a
    data file is read once per experiment, not once per worker; any rewrite changes one of them."""
    stat = path.stat()
    identity = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    remembered = memo / hashlib.sha256(identity.encode()).hexdigest()[:32]
    if remembered.is_file():
        return remembered.read_text()
    content = hashlib.blake2b(digest_size=20)
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            content.update(chunk)
    memo.mkdir(parents=True, exist_ok=True)
    _write_atomically(remembered, content.hexdigest().encode())
    return content.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What makes two tokenizers encode alike: their full definition, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "class": type(tokenizer).__name__,
        "definition": hashlib.sha256(definition.encode()).hexdigest(),
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,  # a chat template may render it
        "pad": tokenizer.pad_token_id,
        "size": len(tokenizer),
        "chat_template": hashlib.sha256(str(getattr(tokenizer, "chat_template", None)).encode()).hexdigest(),
    }


def _code_digest() -> str:
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in CODE)).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomically(path: Path, content: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(content)
    partial.replace(path)


def _build(cfg: TrialConfig, folder: Path, inputs: dict[str, Any], tokenizer: Any) -> float:
    """Rows -> split -> tokenizer -> token arrays, written beside the folder and renamed into
    place when complete (a killed build leaves no folder that looks whole). Returns its seconds."""
    started = time.perf_counter()
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _write_build(cfg, partial, inputs, tokenizer, started)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # a build that failed leaves nothing behind
    return time.perf_counter() - started


def _write_build(cfg: TrialConfig, partial: Path, inputs: dict[str, Any], tokenizer: Any, started: float) -> None:
    from gpt4all_ray.data import load_split

    split = load_split(cfg)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg, split)
    ids_needed = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    id_type = np.uint16 if ids_needed <= np.iinfo(np.uint16).max + 1 else np.int32
    reports = {}
    parallel = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the batch calls encode on every core
    try:
        for part, rows in (("train", split.train), ("val", split.val)):
            try:
                reports[part] = _write_part(partial, part, rows, tokenizer, cfg, id_type)
            except (TooLong, FormatError) as err:
                raise type(err)(f"{'validation' if part == 'val' else part} {err}") from None
    finally:
        if parallel is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallel
    _write_val_rows(partial, split.val)
    tokenizer.save_pretrained(partial / TOKENIZER)
    manifest = {
        "inputs": inputs,
        "id_dtype": np.dtype(id_type).name,
        "rows": {part: len(rows) for part, rows in (("train", split.train), ("val", split.val))},
        "report": dataclasses.asdict(split.report),
        "encoding": {part: dataclasses.asdict(report) for part, report in reports.items()},
        "build_seconds": time.perf_counter() - started,
        # Every file's size as written: a build that lost or cut one is rebuilt, not read.
        "files": {f.relative_to(partial).as_posix(): f.stat().st_size for f in partial.rglob("*") if f.is_file()},
    }
    (partial / MANIFEST).write_text(json.dumps(manifest))


def _write_part(
    folder: Path, part: str, rows: list[Row], tokenizer: Any, cfg: TrialConfig, id_type: Any
) -> EncodeReport:
    report = EncodeReport()
    offsets, spans, span_offsets, total = [0], [], [0], 0
    with (folder / f"{part}.ids.bin").open("wb") as ids_file:
        for batch in encoded(rows, tokenizer, cfg.max_length, cfg.length_policy, report, cfg.prompt_format):
            flat = [token for ids, _ in batch for token in ids]
            ids_file.write(np.asarray(flat, dtype=id_type).tobytes())
            for ids, row_spans in batch:
                total += len(ids)
                offsets.append(total)
                spans += row_spans
                span_offsets.append(len(spans))
    np.save(folder / f"{part}.offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(folder / f"{part}.spans.npy", np.asarray(spans, dtype=np.int32).reshape(-1, 2))
    np.save(folder / f"{part}.span_offsets.npy", np.asarray(span_offsets, dtype=np.int64))
    return report


def _write_val_rows(folder: Path, rows: list[Row]) -> None:
    """The validation rows as text (all of them, as the probes sample them), one JSON line each,
    with each line's byte offset."""
    offsets = [0]
    with (folder / VAL_ROWS).open("wb") as f:
        for row in rows:
            offsets.append(offsets[-1] + f.write(json.dumps(row).encode() + b"\n"))
    np.save(folder / VAL_ROW_OFFSETS, np.asarray(offsets, dtype=np.int64))


def _open(folder: Path, inputs: dict[str, Any], tokenizer: Any) -> PreparedData | None:
    """The build in `folder`, mapped; None when there is none, it does not match its key, or any
    of its files is missing, of another size than written, or unreadable."""
    try:
        return _mapped(folder, inputs, tokenizer)
    except (OSError, ValueError, KeyError, TypeError):  # json, numpy and tokenizer files alike
        return None


def _mapped(folder: Path, inputs: dict[str, Any], tokenizer: Any) -> PreparedData | None:
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["inputs"] != inputs:
        return None
    if any((folder / name).stat().st_size != size for name, size in manifest["files"].items()):
        return None  # cut short or tampered with: rebuilt
    id_type = np.dtype(manifest["id_dtype"])
    parts = {}
    for part in PARTS:
        offsets = np.load(folder / f"{part}.offsets.npy")
        spans = np.load(folder / f"{part}.spans.npy")  # 8 bytes a row: read whole
        span_offsets = np.load(folder / f"{part}.span_offsets.npy")
        ids_path = folder / f"{part}.ids.bin"
        if (
            ids_path.stat().st_size != int(offsets[-1]) * id_type.itemsize
            or len(offsets) != len(span_offsets)
            or int(span_offsets[-1]) != len(spans)
        ):
            return None
        ids = np.memmap(ids_path, dtype=id_type, mode="r") if offsets[-1] else np.zeros(0, id_type)
        parts[part] = TokenizedRows(ids, offsets, spans, span_offsets)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER)
    return PreparedData(
        folder=folder,
        tokenizer=tokenizer,
        train=parts["train"],
        val=parts["val"],
        report=DataReport(**manifest["report"]),
        encoding=EncodeReport(**manifest["encoding"]["train"]),
        built_here=False,
    )
