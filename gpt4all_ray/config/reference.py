"""The configuration reference, docs/configuration.md, generated from spec.py.

Each key's description is the docstring under its field in spec.py, read with `ast`; types and
defaults come from the dataclasses; allowed values from the tuples spec.py checks a key against.
Imports neither torch nor Ray.

    python -m gpt4all_ray.config.reference > docs/configuration.md   # regenerate
    python -m gpt4all_ray.config.reference --check docs/configuration.md
"""

from __future__ import annotations

import argparse
import ast
import contextlib
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
    ("tune", spec.TuneSettings, "How the search runs: budget, searcher, schedulers."),
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
| `tune` | trials, concurrency, searcher, ASHA, budgets (table below) |
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


def allowed_values(source: str | None = None) -> dict[str, tuple[Any, ...]]:
    """Key -> the values spec.py accepts for it, where it checks the key against a tuple: a
    module-level one (SCHEDULES, METHODS, ...) or a literal one."""
    tree = ast.parse(source if source is not None else spec_source())
    tuples: dict[str, tuple[Any, ...]] = {}
    for node in tree.body:
        named = isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        if named and isinstance(node.value, ast.Tuple):  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                tuples[node.targets[0].id] = ast.literal_eval(node.value)  # type: ignore[union-attr]

    def values(expr: ast.expr) -> tuple[Any, ...] | None:
        if isinstance(expr, ast.Name):
            return tuples.get(expr.id)
        if isinstance(expr, ast.Tuple):
            try:
                return ast.literal_eval(expr)
            except ValueError:
                return None
        return None

    def checked(compare: ast.Compare) -> tuple[Any, ...] | None:
        if len(compare.ops) == 1 and isinstance(compare.ops[0], (ast.In, ast.NotIn)):
            return values(compare.comparators[0])
        return None

    found: dict[str, tuple[Any, ...]] = {}
    for node in ast.walk(tree):
        # _RULES: {"key": (lambda v: v in TUPLE, "message"), ...}
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    continue
                if isinstance(value, ast.Tuple) and value.elts and isinstance(value.elts[0], ast.Lambda):
                    lam = value.elts[0]
                    for sub in ast.walk(lam.body):
                        on_arg = isinstance(sub, ast.Compare) and isinstance(sub.left, ast.Name)
                        if on_arg and sub.left.id == lam.args.args[0].arg and checked(sub) is not None:  # type: ignore[union-attr]
                            found.setdefault(key.value, checked(sub))  # type: ignore[arg-type]
        # parse_spec: `if tune.searcher not in SEARCHERS: ...`
        elif (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Attribute)
            and isinstance(node.left.value, ast.Name)
            and checked(node) is not None
        ):
            found.setdefault(node.left.attr, checked(node))  # type: ignore[arg-type]
    return found


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(section: str, cls: type, docs: dict[str, str], allowed: dict[str, tuple[Any, ...]]) -> str:
    searchable = section == "fixed"
    columns = ["key", "type", "default", *(["searchable"] if searchable else []), "description"]
    rows = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for f in dataclasses.fields(cls):
        description = docs.get(f.name, "")
        if f.name in allowed:
            listed = ", ".join(f"`{v}`" for v in allowed[f.name] if v != "")
            label = OPEN_ENDED.get(f.name, "Allowed")
            description += f" {label}: {listed}" + (" or empty." if "" in allowed[f.name] else ".")
        cells = [f"`{f.name}`", str(f.type), _yaml_value(f.default)]
        if searchable:
            cells.append("yes" if f.name in spec.SEARCHABLE else "")
        cells.append(_cell(description.strip()))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def reference_markdown() -> str:
    """docs/configuration.md, as spec.py now describes the configuration."""
    source = spec_source()
    docs = field_docstrings(source)
    allowed = allowed_values(source)
    parts = [INTRO]
    for section, cls, what in SECTIONS:
        table = section_table(section, cls, docs[cls.__name__], allowed)
        parts.append(f"## `{section}`: {cls.__name__}\n\n{what}\n\n{table}\n")
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
