"""Bad inputs across data files, search-space YAML, command-line flags and environment: each is
refused with exit code 2 and one line naming what is wrong (no traceback), before any worker
starts, and leaves nothing half-written in the results folder."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpt4all_ray.cli.tune import main
from gpt4all_ray.experiment.files import FORMAT
from tests.conftest import Record

REPO = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((REPO / "search_spaces" / "tiny_cpu.yaml").read_text())


def space(tmp: Path, fixed: dict[str, Any] | None = None, **sections: Any) -> Path:
    raw = json.loads(json.dumps(DEFAULT))
    raw["fixed"].update(fixed or {})
    for section, values in sections.items():
        raw[section].update(values)
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def data_file(tmp: Path, name: str, lines: list[str] | bytes) -> str:
    path = tmp / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def rows(n: int, **fields: str) -> list[str]:
    return [json.dumps({"prompt": f"question {i}", "response": f"answer {i}"} | fields) for i in range(n)]


# name -> (how to build the command line in tmp, what the error must name)
CASES: dict[str, tuple[Any, str]] = {
    # data files
    "data: empty file": (lambda t: space(t, {"data": data_file(t, "e.jsonl", [])}), "empty file"),
    "data: missing column": (
        lambda t: space(t, {"data": data_file(t, "m.jsonl", [json.dumps({"prompt": "p", "answer": "a"})] * 40)}),
        "missing column(s) 'response'",
    ),
    "data: duplicate rows only": (
        lambda t: space(t, {"data": data_file(t, "d.jsonl", [json.dumps({"prompt": "p", "response": "r"})] * 100)}),
        "dropped as duplicate",
    ),
    "data: all rows too long": (
        lambda t: space(
            t, {"data": data_file(t, "l.jsonl", rows(100, response="word " * 400)), "length_policy": "drop"}
        ),
        "drop leaves 0 of",
    ),
    "data: malformed JSON line": (
        lambda t: space(t, {"data": data_file(t, "j.jsonl", [*rows(30), "{not json", *rows(30)])}),
        "j.jsonl:31: not valid JSON",
    ),
    "data: invalid UTF-8": (
        lambda t: space(t, {"data": data_file(t, "u.jsonl", b'{"prompt": "\xff\xfe"}\n')}),
        "UTF-8",
    ),
    "data: path that does not exist": (lambda t: space(t, {"data": str(t / "nowhere.jsonl")}), "fixed.data"),
    # search-space YAML
    "yaml: learning rate 0": (
        lambda t: space(t, search={"learning_rate": {"uniform": [0.0, 0.1]}}),
        "search.learning_rate: must be > 0",
    ),
    "yaml: zero epochs": (lambda t: space(t, search={"epochs": {"int": [0, 2]}}), "search.epochs: must be > 0"),
    "yaml: warmup longer than the run": (
        lambda t: space(t, search={"warmup_steps": {"int": [5000, 6000]}}),
        "search.warmup_steps: warmup of 5000 steps is not shorter than the longest run",
    ),
    "yaml: global batch not divisible": (
        lambda t: space(t, {"global_batch": 20}),
        "fixed.global_batch: 20 is not a multiple",
    ),
    "yaml: unknown scheduler": (lambda t: space(t, tune={"scheduler": "pbt"}), "tune.scheduler: expected asha"),
    "yaml: misspelt key": (lambda t: space(t, {"learning_rat": 0.1}), "did you mean 'learning_rate'"),
    "yaml: fp16 without GPUs": (lambda t: space(t, {"precision": "fp16"}), "fixed.precision: fp16 needs GPUs"),
    "yaml: unknown model name offline": (
        lambda t: space(t, {"model": "nobody/no-such-model"}),
        "fixed.model: 'nobody/no-such-model'",
    ),
    "yaml: not YAML": (lambda t: _write(t / "bad.yaml", "fixed: [unclosed\n"), "not valid YAML at line 2"),
    # command-line flags
    "flag: --num-trials 0": (lambda t: [*_space_args(t), "--num-trials", "0"], "--num-trials: must be > 0"),
    "flag: --space that does not exist": (lambda t: ["--space", str(t / "missing.yaml")], "no such search-space file"),
    "flag: --resume of nothing": (lambda t: ["--resume", "never-ran"], "holds no experiment to resume"),
    "flag: --results-dir not writable": (
        lambda t: [*_space_args(t), "--results-dir", str(_write(t / "a_file", "") / "results")],
        "--results-dir: cannot write",
    ),
    "flag: --storage memory://": (
        lambda t: [*_space_args(t), "--storage", "memory://bucket/exp"],
        "--storage memory://bucket/exp: an in-memory filesystem lives inside one process",
    ),
    "flag: --storage not writable": (
        lambda t: [*_space_args(t), "--storage", f"file://{_write(t / 'a_file', '')}/store"],
        "cannot write there",
    ),
    "flag: --storage of no known filesystem": (
        lambda t: [*_space_args(t), "--storage", "bogus://bucket/exp"],
        "pyarrow cannot open it",
    ),
    "flag: --storage with --resume": (
        lambda t: ["--resume", str(_resumable(t)), "--storage", f"file://{t}/elsewhere"],
        "--storage: a resumed experiment keeps its storage",
    ),
    "flag: --num-trials with --resume": (
        lambda t: ["--resume", str(_resumable(t)), "--num-trials", "20"],
        "--num-trials: a resumed experiment runs the space and trials it was started with",
    ),
    "flag: --mfu without --dry-run": (
        lambda t: [*_space_args(t), "--mfu", "0.5"],
        "--mfu: only --dry-run uses it, for the plan's cost estimate; leave --mfu out",
    ),
    "yaml: a source filter naming no row's source": (
        lambda t: space(t, {"data": data_file(t, "s.jsonl", rows(60, source="chat")), "exclude_sources": "p3"}),
        "fixed.exclude_sources: no row has source 'p3'; the sources present: 'chat'",
    ),
    "flag: unknown flag": (lambda t: [*_space_args(t), "--num-trails", "3"], "unrecognized arguments: --num-trails"),
    # environment
    "env: RAY_ADDRESS where nothing listens": (lambda t: _space_args(t), "RAY_ADDRESS=127.0.0.1:1: nothing answers"),
    "env: RAY_ADDRESS not an address": (lambda t: _space_args(t), "RAY_ADDRESS=cluster-please: expected host:port"),
}
ENV = {
    "env: RAY_ADDRESS where nothing listens": {"RAY_ADDRESS": "127.0.0.1:1"},
    "env: RAY_ADDRESS not an address": {"RAY_ADDRESS": "cluster-please"},
    "yaml: unknown model name offline": {"HF_HUB_OFFLINE": "1"},
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _resumable(tmp: Path) -> Path:
    """An experiment folder as a run that started leaves it (no storage given)."""
    exp = tmp / "earlier"
    (exp / "ray" / "tune").mkdir(parents=True)
    (exp / "space.yaml").write_text(space(tmp).read_text())
    (exp / "experiment.json").write_text(json.dumps({"space": "s", "num_trials": 1, "storage": None, "format": FORMAT}))
    return exp


def _space_args(tmp: Path) -> list[str]:
    return ["--space", str(space(tmp))]


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse
            rc = int(exit_.code or 0)
    return rc, err.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_by_name_and_leaves_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: Record
) -> None:
    build, message = CASES[case]
    for key, value in ENV.get(case, {"RAY_ADDRESS": "127.0.0.1:1"}).items():
        monkeypatch.setenv(key, value)  # nothing may reach a real cluster, even by mistake
    if "HF_HUB_OFFLINE" in ENV.get(case, {}):  # read at import: this process imported it already
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    built = build(tmp_path)
    argv = ["--space", str(built)] if isinstance(built, Path) else built
    results = tmp_path / "results"
    if "--results-dir" not in argv:
        argv += ["--results-dir", str(results)]
    rc, stderr = run_main(argv if "--resume" in argv else [*argv, "--name", "exp"])  # --resume names it
    assert rc == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 8  # argparse adds its usage
    assert not (results / "exp").exists()  # nothing half-written
    ledger(bad_inputs=1, case=case)


def test_same_name_twice_refuses_and_never_touches_the_first(tmp_path: Path, ledger: Record) -> None:
    """The second experiment of a name is refused (the first is continued only by --resume)."""
    first = tmp_path / "results" / "exp"
    first.mkdir(parents=True)
    (first / "leaderboard.csv").write_text("trial_id\nkept\n")
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    rc, stderr = run_main(
        ["--space", str(space(tmp_path)), "--results-dir", str(tmp_path / "results"), "--name", "exp"]
    )
    assert rc == 2 and "experiment" in stderr and "--resume exp" in stderr
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    ledger(bad_inputs=1, case="same experiment name twice")


def test_the_battery_tries_at_least_twenty_bad_inputs() -> None:
    assert len(CASES) + 1 >= 20
