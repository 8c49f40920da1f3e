"""The configuration reference, docs/configuration.md, generated from spec.py.

Each key's description is the docstring under its field in spec.py, read with `ast`; types and
defaults come from the dataclasses; groups and allowed values from each field's metadata (spec.setting).
Imports neither torch nor Ray.

    python -m gpt4all_ray.config.reference > docs/configuration.md   # regenerate
    python -m gpt4all_ray.config.reference --check docs/configuration.md
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path
from typing import Any

from gpt4all_ray.config import spec

REGENERATE = "python -m gpt4all_ray.config.reference > docs/configuration.md"

# (YAML section, dataclass, what the section is)
SECTIONS: tuple[tuple[str, type, str], ...] = (
    (
        "fixed",
        spec.TrialConfig,
        "Settings of every trial. A key marked searchable may instead be sampled under `search:` "
        "(one place or the other, not both).",
    ),
    ("resources", spec.Resources, "What Ray reserves for each trial."),
    ("tune", spec.TuneSettings, "How the search runs: budget, searcher, schedulers, experiment tracking."),
)

INTRO = f"""\
# Configuration reference

<!-- Generated from gpt4all_ray/config/spec.py; do not edit. Regenerate: {REGENERATE} -->

A search is one YAML file, a search space (`--space NAME` for `search_spaces/NAME.yaml`, or a
path). `gpt4all-ray tune --help-space` prints this page. Its top-level keys:

| key | what |
| --- | --- |
| `name` | the experiment's name prefix (default: the file's name) |
| `fixed` | settings every trial shares (table below) |
| `search` | searchable keys sampled per trial, each with one distribution |
| `resources` | workers, CPUs and GPUs per trial (table below) |
| `tune` | trials, concurrency, searcher, ASHA, budgets, tracking (table below) |
| `enqueue` | configurations tried first, in order; each gives every key under `search` |

A distribution under `search` is one of:

| distribution | samples |
| --- | --- |
| `{{loguniform: [low, high]}}` | a number, uniform in log space (low > 0) |
| `{{uniform: [low, high]}}` | a number, uniform |
| `{{int: [low, high]}}` | an integer, low and high included |
| `{{choice: [a, b, ...]}}` | one of the values (the only one for strings) |

```yaml
name: tiny_cpu
fixed:
  model: tiny-gptj
  global_batch: 16
search:
  learning_rate: {{loguniform: [3.0e-4, 3.0e-2]}}
  lr_schedule: {{choice: [constant_with_warmup, linear, cosine]}}
  epochs: {{int: [2, 4]}}
resources:
  workers_per_trial: 2
tune:
  num_trials: 6
enqueue:
  - {{learning_rate: 1.0e-3, lr_schedule: linear, epochs: 3}}
```

A key left out takes its default. A file with an unknown key, a value of the wrong type or out of
range, or settings that cannot go together is refused before Ray starts, naming the file and key.
`--set SECTION.KEY=VALUE` (repeatable; SECTION one of {", ".join(f"`{s}`" for s in spec.OVERRIDABLE)};
VALUE read as YAML) changes one setting from the command line, checked as if the file held it, and
kept in the experiment's `space.yaml`.
"""


# Keys whose tuple lists some of the accepted values, not all of them.
OPEN_ENDED = {"model": "Built-in"}


def spec_source() -> str:
    return Path(spec.__file__).read_text()


def field_docstrings(source: str | None = None) -> dict[str, dict[str, str]]:
    """Class name -> field name -> its docstring ("" where none), in the order of the fields."""
    tree = ast.parse(source if source is not None else spec_source())
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        body = node.body
        for i, item in enumerate(body):
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                after = body[i + 1] if i + 1 < len(body) else None
                is_doc = (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                )
                docs[item.target.id] = " ".join(after.value.value.split()) if is_doc else ""  # type: ignore[union-attr]
        found[node.name] = docs
    return found


def allowed_values(cls: type) -> dict[str, tuple[Any, ...]]:
    """Key -> the values its rule accepts, where the rule is a list of them (spec.one_of)."""
    rules = {f.name: f.metadata.get("rule") for f in dataclasses.fields(cls)}
    return {name: rule.choices for name, rule in rules.items() if rule is not None and rule.choices}


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(
    section: str, rows: list[dataclasses.Field], docs: dict[str, str], allowed: dict[str, tuple[Any, ...]]
) -> str:
    searchable = section == "fixed"
    columns = ["key", "type", "default", *(["searchable"] if searchable else []), "description"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for f in rows:
        description = docs.get(f.name, "")
        if f.name in allowed:
            listed = ", ".join(f"`{v}`" for v in allowed[f.name] if v != "")
            label = OPEN_ENDED.get(f.name, "Allowed")
            description += f" {label}: {listed}" + (" or empty." if "" in allowed[f.name] else ".")
        cells = [f"`{f.name}`", str(f.type), _yaml_value(f.default)]
        if searchable:
            cells.append("yes" if f.name in spec.SEARCHABLE else "")
        cells.append(_cell(description.strip()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_markdown() -> str:
    """docs/configuration.md, as spec.py now describes the configuration: `fixed` in one table per
    concern (spec.GROUPS), `resources` and `tune` in one table each."""
    docs = field_docstrings(spec_source())
    parts = [INTRO]
    for section, cls, what in SECTIONS:
        allowed, own = allowed_values(cls), docs[cls.__name__]
        fields = dataclasses.fields(cls)
        if cls is not spec.TrialConfig:
            parts.append(
                f"## `{section}`: {cls.__name__}\n\n{what}\n\n{section_table(section, list(fields), own, allowed)}\n"
            )
            continue
        parts.append(f"## `{section}`: {cls.__name__}\n\n{what}\n")
        for group in spec.GROUPS:
            grouped = [f for f in fields if f.metadata["group"] == group]
            parts.append(f"### {group}\n\n{section_table(section, grouped, own, allowed)}\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpt4all_ray.config.reference", description=__doc__.splitlines()[0])
    p.add_argument("--check", type=Path, metavar="PATH", help="exit 1 if PATH differs from the generated text")
    args = p.parse_args(argv)
    text = reference_markdown()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    current = args.check.read_text() if args.check.is_file() else None
    if current != text:
        why = "does not exist" if current is None else "differs from what gpt4all_ray/config/spec.py generates"
        print(f"{args.check} {why}; regenerate it: {REGENERATE}", file=sys.stderr)
        return 1
    print(f"{args.check} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
