"""`python -m gpt4all_ray.data`: the pipeline's report, as text or JSON, with nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt4all_ray.data.__main__ import SHOWN, main, padding_fraction
from gpt4all_ray.data.encode import Example

GPTEACHER = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpteacher-codegen-instruct.json"


def ex(n: int) -> Example:
    return Example([1] * n, [1] * n)


def test_padding_fraction_by_hand() -> None:
    examples = [ex(2), ex(4), ex(3), ex(3)]  # batches (2, 4) and (3, 3): 8 + 6 slots for 12 tokens
    assert padding_fraction(examples, batch=2, max_length=None) == pytest.approx(1 - 12 / 14)
    assert padding_fraction(examples, batch=2, max_length=8) == pytest.approx(1 - 12 / 32)
    assert padding_fraction([], batch=2, max_length=None) == 0.0


def test_json_report_of_the_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "--rows", "600"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_in"] == 600 == report["rows_kept"] + sum(report["dropped"].values())
    assert report["rows_kept"] == report["train_rows"] + report["val_rows"] == sum(report["sources"].values())
    assert report["train_truncated_rows"] + report["train_rows_with_eos"] == report["train_rows"]
    assert 0 < report["train_label_tokens"] < report["train_tokens"]
    assert 0 < report["padding_fraction"]["pad_to_longest"] < report["padding_fraction"]["pad_to_max_length"] < 1
    assert report["pad_token_id"] != report["eos_token_id"]


@pytest.mark.parametrize(("flags", "shown"), [(["--show", "2"], 2), (["--show"], SHOWN)])
def test_examples_show_the_masked_prompt(capsys: pytest.CaptureFixture[str], flags: list[str], shown: int) -> None:
    assert main(["--rows", "200", *flags]) == 0
    out = capsys.readouterr().out
    assert out.count("«### Prompt:") == shown
    assert out.count("<EOS>") + out.count("<truncated, no EOS>") == shown


def test_bad_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": 1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gpt4all_ray.data", "--data", str(data)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"error: {data}:2: not valid JSON" in proc.stderr


@pytest.mark.skipif(not GPTEACHER.is_file(), reason=f"real data not present at {GPTEACHER}")
def test_report_on_real_gpteacher(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", str(GPTEACHER), "--prompt-column", "instruction", "--input-column", "input", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_in"] == 4535 == report["rows_kept"] + sum(report["dropped"].values())
    assert report["sources"] == {"gpteacher-codegen-instruct": report["rows_kept"]}
    assert report["train_truncated_rows"] > 0  # long code answers exceed 128 tokens
