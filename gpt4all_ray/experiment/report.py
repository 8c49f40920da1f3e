"""`gpt4all-ray report runs/<experiment>`: the experiment's report, from its stored
files alone (the search writes the same report when it ends).

<experiment>/ gets leaderboard.csv/.md, best.json and best/ (records.py) with its model card
best/README.md (model_card.py), and summary.md:
the leaderboard, the best configuration and why it won, each trial's stop reason, the compute
used and the compute saved by stopping early, and PNG figures: validation loss per evaluation
for every trial with its stop point marked, best loss against each hyperparameter, and Optuna's
parameter importances when there are enough trials.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt4all_ray.evaluation import StopReason, evaluations
from gpt4all_ray.experiment.compute import LABELS, Compute, compute_used
from gpt4all_ray.experiment.durable_reports import RestartCause
from gpt4all_ray.experiment.files import (
    StoredTrial,
    default_storage_url,
    load_study,
    min_stop_rate,
    read_settings,
    read_starts,
    searcher_values,
    start_origin,
    storage_root,
    stored_trials,
)
from gpt4all_ray.experiment.model_card import CARD, CardFacts, model_card
from gpt4all_ray.experiment.records import (
    BestTrial,
    TrialRecord,
    leaderboard_row,
    ranked,
    record_from_history,
    write_report,
)
from gpt4all_ray.experiment.stop_log import read_stops, stopped_by
from gpt4all_ray.experiment.storage import storage_used

MIN_TRIALS_FOR_IMPORTANCE = 5  # importances from fewer completed trials say little


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def why_it_won(best: TrialRecord, others: list[TrialRecord]) -> str:
    finite = [r for r in others if math.isfinite(r.best_val_loss)]
    where = f"at epoch {best.best_epoch} (step {best.best_step})"
    loss = best.best_val_loss
    text = f"lowest validation loss of all trials, {loss:.4f} (perplexity {math.exp(loss):.2f}), {where}"
    if finite:
        runner = min(finite, key=lambda r: r.best_val_loss)
        gap = runner.best_val_loss - best.best_val_loss
        text += f"; {gap:.4f} ({gap / runner.best_val_loss:.1%}) below the runner-up, trial {runner.trial_id}"
    if best.stop_reason.stopped_early:
        text += f"; the trial was stopped ({best.stop_reason}) and its best checkpoint kept, as GPT4All kept epoch 1"
    return text + "."


def probe_line(best: TrialRecord, min_stop_rate: float, met: bool) -> str:
    """What the best checkpoint generates, and whether the stop-rate constraint chose it."""
    p = best.probes
    if not p:
        return "Generation probes: none ran (fixed.probe_prompts is 0)."
    exact = f", exact match {p['exact_match']:.0%}" if "exact_match" in p else ""
    text = (
        f"Generation probes of its best checkpoint: stop rate {p['stop_rate']:.0%}, "
        f"{p['mean_new_tokens']:.1f} tokens an answer, repeated 3-grams {p['repetition_rate']:.0%}{exact}."
    )
    if min_stop_rate:
        text += (
            f" Chosen among trials whose stop rate is at least {min_stop_rate:.0%}."
            if met
            else f" No trial reached the required stop rate of {min_stop_rate:.0%}: this is the lowest loss overall."
        )
    return text


def stop_line(trial: StoredTrial, record: TrialRecord) -> str:
    reported = evaluations(trial.history)
    if record.stop_reason is StopReason.ERROR:
        ended = [r for r in trial.restarts if not r.restarted]
        why = f": {ended[-1].error[:160]} ({ended[-1].cause.value}, its restart budget spent)" if ended else ""
        return f"- {record.trial_id}: failed{why} (see its error.txt under ray/tune/)"
    if not reported:
        return f"- {record.trial_id}: no evaluation reported ({record.stop_reason})"
    last = reported[-1]
    at = f"epoch {last.epoch}, step {last.step}"
    restarts = f"; resumed {record.restarts}x from checkpoints" if record.restarts else ""
    if restarted := [r for r in trial.restarts if r.restarted]:
        preempted = sum(r.cause is RestartCause.PREEMPTION for r in restarted)
        restarts += f"; Ray Train restarted its workers {len(restarted)}x"
        restarts += f" ({preempted} after losing a node to preemption)"
    nodes = {node for e in reported for node in e.worker_nodes}
    spread = f"; its ranks ran on {len(nodes)} nodes" if len(nodes) > 1 else ""
    best = f"best at epoch {record.best_epoch} (step {record.best_step})"
    return f"- {record.trial_id}: {record.stop_reason} at {at}; {best}{restarts}{spread}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plot_curves(trials: list[StoredTrial], records: list[TrialRecord], path: Path) -> dict[str, Any]:
    """The figure, and the series it drew (figures.json keeps them, so the figure is checkable)."""
    fig, ax = _pyplot().subplots(figsize=(8, 5))
    drawn: dict[str, Any] = {}
    for trial, record in zip(trials, records, strict=True):
        points = [(e.epoch_progress or float(e.epoch), e.val_loss) for e in evaluations(trial.history)]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        (line,) = ax.plot(xs, ys, marker=".", label=f"{record.trial_id} ({record.stop_reason})")
        best = min(range(len(ys)), key=ys.__getitem__)
        ax.plot(xs[best], ys[best], marker="*", markersize=12, color=line.get_color())
        stopped = record.stop_reason.stopped_early
        if stopped:
            ax.plot(xs[-1], ys[-1], marker="X", markersize=11, color="black")
        drawn[record.trial_id] = {"points": points, "best": [xs[best], ys[best]], "stopped": stopped}
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss per evaluation (* best, X stopped)")
    ax.legend(fontsize=7)
    _save(fig, path)
    return drawn


def plot_hyperparameters(records: list[TrialRecord], names: list[str], path: Path) -> None:
    shown = [r for r in records if math.isfinite(r.best_val_loss)]
    fig, axes = _pyplot().subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        values = [r.params.get(name) for r in shown]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        ax.scatter(xs, [r.best_val_loss for r in shown])
        if numeric and name == "learning_rate" and all(v is not None and v > 0 for v in values):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    axes[0][0].set_ylabel("best validation loss")
    _save(fig, path)


def plot_importances(study: Any, path: Path) -> dict[str, float] | None:
    import optuna

    if study is None:
        return None
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    # PED-ANOVA: Optuna's fast evaluator, and it needs no scikit-learn (fANOVA does).
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
    )
    fig, ax = _pyplot().subplots(figsize=(6, 3))
    ax.barh(list(importances), list(importances.values()))
    ax.set_xlabel("importance (PED-ANOVA)")
    _save(fig, path)
    return dict(importances)


@dataclass(frozen=True)
class ExperimentReport:
    leaderboard: list[TrialRecord]
    """Every trial, best first."""
    best: BestTrial | None
    """None when no trial produced a checkpoint."""


def build_report(exp_dir: Path, storage_url: str | None = None) -> ExperimentReport:
    """Leaderboard, best checkpoint, summary.md and figures, from the experiment folder alone."""
    exp_dir = exp_dir.resolve()
    storage_url = storage_url or default_storage_url(exp_dir)
    trials = stored_trials(exp_dir)
    study = load_study(storage_url, exp_dir.name)
    values = searcher_values(study)
    records, stops, starts = [], read_stops(exp_dir), read_starts(exp_dir)
    for trial in trials:
        by = stopped_by(stops, trial.trial_id)
        record = record_from_history(trial.trial_id, trial.params, trial.history, trial.error, by)
        record.searcher_value = values.get(trial.trial_id)
        record.start = start_origin(starts, trial.params)
        records.append(record)
    names = sorted({k for t in trials for k in t.params})
    configs = {t.trial_id: t.config for t in trials if t.config}
    best = write_report(exp_dir, records, names, configs, min_stop_rate(exp_dir), storage_root(exp_dir))
    if best is not None and best.config is not None:
        write_card(exp_dir, best, trials, records, names)

    curves = plot_curves(trials, records, exp_dir / "val_loss.png")
    (exp_dir / "figures.json").write_text(json.dumps({"val_loss": curves}, indent=1))
    plot_hyperparameters(records, names, exp_dir / "hyperparameters.png")
    try:
        importances: dict[str, float] | str | None = plot_importances(study, exp_dir / "importances.png")
    except Exception as err:  # noqa: BLE001 (an optional figure must not cost the finished search its report)
        importances = f"parameter importances could not be computed: {type(err).__name__}: {err}"
    compute = compute_used(trials, records)
    (exp_dir / "summary.md").write_text(summary_markdown(exp_dir, trials, records, best, compute, importances))
    return ExperimentReport(ranked(records), best)


def write_card(
    exp_dir: Path, best: BestTrial, trials: list[StoredTrial], records: list[TrialRecord], names: list[str]
) -> None:
    """best/README.md (model_card.py), in the words of summary.md."""
    winner = best.record
    (trial,) = [t for t in trials if t.trial_id == winner.trial_id]
    # What the engine ran with, saved beside the model; else the copy its driver wrote.
    shipped = best.checkpoint / "ds_config.json"
    facts = CardFacts(
        exp_dir=exp_dir,
        trials=len(trials),
        row=leaderboard_row(winner, names),
        why_it_won=why_it_won(winner, [r for r in records if r is not winner]),
        probes=probe_line(winner, best.min_stop_rate, best.constraint_met),
        stopped=stop_line(trial, winner),
        ds_config=json.loads(shipped.read_text()) if shipped.is_file() else trial.ds_config,
        settings=read_settings(exp_dir),
        files=tuple(sorted(p.name for p in best.checkpoint.iterdir())),
    )
    (best.checkpoint / CARD).write_text(model_card(best, facts))


def summary_markdown(
    exp_dir: Path,
    trials: list[StoredTrial],
    records: list[TrialRecord],
    best: BestTrial | None,
    compute: Compute,
    importances: dict[str, float] | str | None,
) -> str:
    lines = [f"# Experiment {exp_dir.name}", ""]
    lines += [f"{len(trials)} trials. Regenerate with `gpt4all-ray report {exp_dir}`.", ""]
    if best is not None:
        winner = best.record
        lines += ["## Best configuration", ""]
        lines += [f"Trial {winner.trial_id}: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in winner.params.items()), ""]
        lines += ["Why it won: " + why_it_won(winner, [r for r in records if r is not winner]), ""]
        lines += [probe_line(winner, best.min_stop_rate, best.constraint_met), ""]
        card = f", with its model card `best/{CARD}`" if (best.checkpoint / CARD).is_file() else ""
        lines += [f"Checkpoint: `best/` (Hugging Face format{card}); full configuration in `best.json`.", ""]
    else:
        lines += ["No trial produced a checkpoint.", ""]
    lines += ["## Leaderboard", "", (exp_dir / "leaderboard.md").read_text(), "## Why each trial stopped", ""]
    ordered = {r.trial_id: r for r in ranked(records)}
    by_id = {t.trial_id: t for t in trials}
    lines += [stop_line(by_id[i], r) for i, r in ordered.items()]
    requested, run = compute.trial_epochs_requested, compute.trial_epochs_run
    saved_share = 1 - run / requested if requested else 0.0
    lines += [
        "",
        "## Compute",
        "",
        "| | trial-epochs | worker-hours |",
        "|---|---|---|",
        f"| used | {compute.trial_epochs_run:.2f} | {compute.worker_hours_used:.4f} |",
        f"| asked for by the sampled epochs | {compute.trial_epochs_requested:.2f} | |",
        f"| saved by stopping early | {requested - run:.2f} ({saved_share:.0%}) | {compute.worker_hours_saved:.4f} |",
        "",
        "Worker-hours: each trial's wall time x its workers; saved: the epochs a stopped trial did not run, "
        + (
            "each at what an epoch cost it (steps, evaluation, checkpoint, report; not its start and setup, which "
            "every trial pays)."
            if compute.worker_hours_by_phase
            else "at its own wall seconds per epoch (start and setup included: its workers did not time phases)."
        ),
        "",
        *time_by_phase_lines(compute),
        *storage_lines(exp_dir),
        "## Figures",
        "",
        "![validation loss](val_loss.png)",
        "",
        "![best loss against each hyperparameter](hyperparameters.png)",
        "",
    ]
    if isinstance(importances, str):
        lines += [importances, ""]
    elif importances:
        lines += ["Parameter importances (Optuna, PED-ANOVA):", "", "![importances](importances.png)", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in importances.items()] + [""]
    else:
        lines += [f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials.", ""]
    return "\n".join(lines)


def storage_lines(exp_dir: Path) -> list[str]:
    """What the experiment holds; left out when its storage cannot be read from here."""
    try:
        used = storage_used(exp_dir, storage_root(exp_dir))
    except OSError as err:
        return ["## Storage", "", f"Not measured: {storage_root(exp_dir)} cannot be read from here ({err}).", ""]
    return [
        "## Storage",
        "",
        *used.lines(),
        "",
        "A trial that has ended keeps its exported model; its resume state (engine, optimizer) is dropped unless "
        "tune.keep_resume_state is set. A trial that failed keeps it, for --resume.",
        "",
    ]


def time_by_phase_lines(compute: Compute) -> list[str]:
    """Where the trials' wall time went, over the trials whose workers timed it."""
    by_phase = compute.worker_hours_by_phase
    timed = sum(by_phase.values())  # their wall time: the phases and the rest
    if not timed:
        return []
    lines = ["Where the trials' wall time went:", "", "| | worker-hours | share |", "|---|---|---|"]
    lines += [f"| {LABELS[group]} | {hours:.4f} | {hours / timed:.0%} |" for group, hours in by_phase.items()]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt4all-ray report", description=__doc__.splitlines()[0])
    p.add_argument("experiment", type=Path, help="the experiment folder (runs/<experiment>)")
    p.add_argument("--optuna-storage", help="the study's RDB URL when not the experiment's SQLite file")
    args = p.parse_args(argv)
    if not (args.experiment / "ray" / "tune").is_dir():
        print(f"error: {args.experiment}: no stored experiment (ray/tune/ missing)", file=sys.stderr)
        return 2
    report = build_report(args.experiment, args.optuna_storage)
    print(f"Report: {args.experiment.resolve() / 'summary.md'}")
    return 0 if report.best is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
