"""A figure README states is the one in the artifact it names: the benchmark table's rows against
the files in its artifact column, the analysis sentence against analysis.json, the bad-input count
against the battery. A README edited by hand, or an artifact regenerated, fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
RESULTS = REPO / "results"


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def benchmark_rows() -> dict[str, dict[str, str]]:
    lines = [line for line in section("Benchmarks").splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    return {row["#"]: row for row in rows}


def artifacts(row: dict[str, str]) -> list[Path]:
    return [RESULTS / name for name in re.findall(r"`([^`]+)`", row["artifact (`results/`)"])]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table_row(text: str, arm: str, runs: str) -> list[str]:
    """The cells of a printed Markdown table's row that starts | arm | runs |."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == [arm, runs]:
            return cells
    raise AssertionError(f"no row | {arm} | {runs} | in the artifact")


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_benchmark_row_names_artifacts_that_exist() -> None:
    rows = benchmark_rows()
    assert sorted(rows) == ["1", "2", "3", "4"]
    for row in rows.values():
        assert artifacts(row) and all(path.is_file() for path in artifacts(row)), row


def test_row_1_worker_overhead_is_the_pooled_table() -> None:
    row = benchmark_rows()["1"]
    (printed,) = artifacts(row)
    two_ranks = table_row(printed.read_text(), "ray", "36")[5]  # "0.949 (0.923-0.987)"
    one_rank = table_row(printed.read_text(), "ray", "8")[5]
    median, interval = re.fullmatch(r"([\d.]+) \(([\d.]+-[\d.]+)\)", two_ranks).groups()  # type: ignore[union-attr]
    assert f"{median} with two ranks" in row["measured"] and f"90% interval {interval}" in row["measured"]
    assert f"{one_rank.split()[0]} with one rank" in row["measured"]


def test_row_2_packing_is_the_packing_runs() -> None:
    row = benchmark_rows()["2"]
    latest, before_after = artifacts(row)
    ratio = json.loads(latest.read_text())["per_collation"]["pack"]["ratio_to_max_length"]
    runs = json.loads(before_after.read_text())
    old, new = (
        runs[k]["per_collation"]["pack"]["ratio_to_max_length"] for k in runs if k.endswith(("557710a", "412793f"))
    )
    assert row["measured"].startswith(f"{ratio:.2f}x; {old:.2f}x and {new:.2f}x before and after")


def test_row_3_search_efficiency_is_the_ert_run() -> None:
    row = benchmark_rows()["3"]
    (path,) = artifacts(row)
    run = json.loads(path.read_text())
    (low, high), (low_s, high_s) = run["ours_ert_ratio_epochs_interval90"], run["ours_ert_ratio_worker_s_interval90"]
    assert row["measured"] == (
        f"{run['ours_ert_ratio_epochs']:.2f} in trial-epochs (90% interval {low:.2f}-{high:.2f}; "
        f"{run['ours_reached']} of {len(run['seeds'])} seeds reached the target, random search "
        f"{run['random_reached']}); {run['ours_ert_ratio_worker_s']:.2f} in worker-seconds ({low_s:.2f}-{high_s:.2f})"
    )
    assert f"target {run['target_val_loss']}" in row["figure"] and f"{len(run['seeds'])} seeds" in row["figure"]
    assert row["goal"] == "<= 0.5: " + ("met" if run["ours_ert_ratio_epochs"] <= 0.5 else "not met")


def test_row_4_mfu_is_the_gpu_sessions() -> None:
    row = benchmark_rows()["4"]
    h200, h100 = (jsonl(path) for path in artifacts(row))
    full_128 = [r["mfu_steady"] for r in h200 if r["case"] == "full_bf16_gelu_pytorch_tanh_mb128"]
    (lora_128,) = [r["mfu_steady"] for r in h200 if r["case"] == "lora_bf16_gelu_pytorch_tanh_mb128"]
    (full_h100,) = [r["mfu_steady"] for r in h100 if r["case"] == "full_bf16_gelu_pytorch_tanh_mb64"]
    low, high = sorted(full_128)
    h200_figure = f"{pct(low)[:-1]}-{pct(high)} on an H200 (LoRA {pct(lora_128)})"
    assert row["measured"] == f"{h200_figure}; {pct(full_h100)} on an H100 with an older configuration"


def test_the_analysis_sentence_is_its_analysis_json() -> None:
    text = section("What the model generates, example by example")
    sentence = text[text.index("On the default search's best checkpoint") :].split("\n\n")[0]
    (name,) = re.findall(r"`(results/[^`]+analysis\.json)`", sentence)
    analysis = json.loads((REPO / name).read_text())
    tuned, base = analysis["probes"]["tuned"], analysis["probes"]["base"]
    loss = {r["source"]: r["mean_loss"] for r in analysis["by_source"]}
    highest, second, lowest = (
        sorted(loss, key=loss.get, reverse=True)[0],
        sorted(loss, key=loss.get)[-2],
        min(loss, key=loss.get),
    )  # type: ignore[arg-type]
    expected = [
        f"{analysis['probe_prompts']} probe prompts",
        f"stop rate {pct(tuned['stop_rate'])} vs {pct(base['stop_rate'])}",
        f"{tuned['mean_new_tokens']:.1f} tokens an answer vs {base['mean_new_tokens']:.1f}",
        f"exact match {pct(tuned['exact_match'])} vs {pct(base['exact_match'])}",
        f"`{highest}` ({loss[highest]:.2f}) and `{second}`\n({loss[second]:.2f})",
        f"`{lowest}` ({loss[lowest]:.2f})",
    ]
    flat = " ".join(sentence.split())
    for figure in expected:
        assert " ".join(figure.split()) in flat, figure
    # No other figure in the sentence (the date and the path aside).
    stated = re.findall(r"\d+\.\d+%?|\d+%", re.sub(r"`[^`]*`", "", flat))
    assert sorted(stated) == sorted(re.findall(r"\d+\.\d+%?|\d+%", " ".join(expected)))


@pytest.mark.parametrize("title", ["Reliability: faults injected, bad inputs tried"])
def test_the_bad_input_count_is_the_batterys(title: str) -> None:
    from tests.reliability.test_bad_inputs import CASES

    assert f"Bad inputs ({len(CASES)} in `tests/reliability/test_bad_inputs.py`" in section(title)
