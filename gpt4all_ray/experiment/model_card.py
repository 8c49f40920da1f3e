"""The best checkpoint's model card: <experiment>/best/README.md in the Hugging Face format, so
best/ can be uploaded to the Hub as it stands.

A YAML metadata header (base model, library, tags, Hub data set), then what the search knows of
the winner: its data, configuration, leaderboard row, probe scores, how it stopped, the DeepSpeed
config it ran with, how to load it and how it was found. Text only: the report (report.py)
gathers the facts, its sentences included, and writes the file.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from gpt4all_ray.config import (
    EMBEDDED_DATA,
    EMBEDDED_MODELS,
    ENGINE,
    HUB_MODEL_ID,
    HUB_PREFIX,
    MODEL,
    OPTIMIZER,
    STOPPING,
    TrialConfig,
)
from gpt4all_ray.experiment.files import PROMPT_PLACEHOLDER
from gpt4all_ray.experiment.records import BestTrial, leaderboard_cell
from gpt4all_ray.train.model import EMBEDDING_MULTIPLE

CARD = "README.md"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: best/ holds an adapter, not a whole model
TRIAL_CONFIG = "trial_config.json"  # train/checkpoint.py save_model writes it beside the model
EXAMPLE_PROMPT = "Name three primary colours."
HERE = "."
HERE_MEANS = "this folder, run from inside it; once uploaded, its Hub repository id"

# The settings the recipe shows beside the sampled ones; the data's are in its own section.
RECIPE_GROUPS = (MODEL, OPTIMIZER, ENGINE, STOPPING)
# Where a model is cached and the peak used for MFU change nothing about the trained model.
NOT_RECIPE = {"hf_cache", "peak_tflops"}
LORA_ONLY = {"lora_targets", "lora_r", "lora_alpha", "lora_dropout"}


@dataclass(frozen=True)
class CardFacts:
    """What the report knows of the winner besides BestTrial."""

    exp_dir: Path
    trials: int
    """Trials the experiment holds."""
    row: dict[str, Any]
    """Its leaderboard row (records.leaderboard_row)."""
    why_it_won: str
    probes: str
    stopped: str
    """Its line of summary.md's "Why each trial stopped"."""
    ds_config: dict[str, Any] | None
    """The DeepSpeed config it ran with."""
    settings: dict[str, Any]
    """experiment.json: the command line's settings and the data read."""
    files: tuple[str, ...]
    """What best/ holds."""


def trial_config(saved: dict[str, Any]) -> TrialConfig:
    """A saved trial_config.json; keys this version no longer has are left out."""
    known = {f.name for f in fields(TrialConfig)}
    return TrialConfig(**{k: v for k, v in saved.items() if k in known})


def hub_base(model: str) -> str | None:
    """The base model's Hub id, or None for a built-in model or a local folder (the Hub knows
    neither, so the card declares no base_model for them)."""
    if model in EMBEDDED_MODELS or Path(model).is_absolute() or Path(model).is_dir():
        return None
    return model if HUB_MODEL_ID.match(model) else None


def metadata(cfg: TrialConfig, adapter: bool) -> dict[str, Any]:
    """The YAML header. No license: the search does not know the base model's or the data's."""
    header: dict[str, Any] = {}
    if base := hub_base(cfg.model):
        header["base_model"] = base
    header["library_name"] = "peft" if adapter else "transformers"
    header["pipeline_tag"] = "text-generation"
    header["tags"] = ["gpt4all-ray", "fine-tuned", "deepspeed", *(["lora"] if cfg.method == "lora" else [])]
    if cfg.data.startswith(HUB_PREFIX) and HUB_MODEL_ID.match(cfg.data.removeprefix(HUB_PREFIX)):
        header["datasets"] = [cfg.data.removeprefix(HUB_PREFIX)]  # a Hub id (load_dataset takes folders too)
    return header


def shown(path: str) -> str:
    """A path as the card shows it: an absolute one (the space's model folder, data and DeepSpeed
    file are recorded so) by its name only. The card is for publishing; the folders of the machine
    the search ran on mean nothing there (and may say more than they should)."""
    return Path(path).name if Path(path).is_absolute() else path


def model_card(best: BestTrial, facts: CardFacts) -> str:
    """The card's text: the metadata as YAML between `---` lines, then Markdown. Whether best/ holds
    an adapter is read from its files (what loads it), not from the configured method."""
    if best.config is None:
        raise ValueError(f"trial {best.record.trial_id}: no trial configuration stored, no card to write")
    cfg = trial_config(best.config)
    adapter = ADAPTER_CONFIG in facts.files
    header = yaml.safe_dump(metadata(cfg, adapter), sort_keys=False)
    sections = [
        [f"# {facts.exp_dir.name}: best trial {best.record.trial_id}", "", *about(cfg, adapter, facts)],
        data_section(cfg, facts.settings),
        recipe_section(cfg, best, facts),
        ["## Leaderboard row", "", "| column | value |", "|---|---|"]
        + [f"| {column} | {leaderboard_cell(value, column)} |" for column, value in facts.row.items()],
        ["## Generation probes", "", facts.probes],
        ["## How it stopped", "", facts.stopped, "", f"Why it won: {facts.why_it_won}"],
        ds_config_section(cfg, facts),
        loading_section(cfg, adapter, best.checkpoint, facts.settings),
        found_section(facts),
    ]
    return "\n".join(["---", header.rstrip("\n"), "---", ""] + [line for s in sections for line in [*s, ""]])


def about(cfg: TrialConfig, adapter: bool, facts: CardFacts) -> list[str]:
    what = "a LoRA adapter (PEFT) for a causal language model" if adapter else "a fully fine-tuned causal LM"
    lines = [
        f"This folder holds {what}, trained with gpt4all-ray and DeepSpeed: the best of {facts.trials} trials of a "
        "hyperparameter search (Ray Tune with Optuna over Ray Train trials), at its lowest validation loss.",
        "",
    ]
    base = hub_base(cfg.model)
    if base:
        lines.append(f"Base model: [`{base}`](https://huggingface.co/{base}).")
    elif cfg.model in EMBEDDED_MODELS:
        lines.append(
            f"Base model: gpt4all-ray's built-in `{cfg.model}`, built from a config in-process with random weights "
            f"(seed {cfg.seed}); it is not on the Hugging Face Hub, so this card declares no `base_model`. Its "
            "tokenizer was trained on the training rows and is saved here."
        )
    else:
        lines.append(
            f"Base model: a local folder, `{shown(cfg.model)}`; not a Hub id, so this card declares no `base_model` "
            "(add one if that folder is a copy of a Hub model)."
        )
    lines += [
        "",
        "No license is declared: the search does not know the base model's or the data's terms; add a "
        "`license:` that they allow before publishing.",
    ]
    return lines


def data_section(cfg: TrialConfig, settings: dict[str, Any]) -> list[str]:
    data = settings.get("data") or {}
    if cfg.data == EMBEDDED_DATA:
        source = f"`embedded`: {cfg.data_rows} GPT4All-style rows generated in-process (seed {cfg.data_seed})"
    elif cfg.data.startswith(HUB_PREFIX):
        name = cfg.data.removeprefix(HUB_PREFIX)
        source = f"the `train` split of the Hugging Face data set [`{name}`](https://huggingface.co/datasets/{name})"
    else:
        columns = f"`{cfg.prompt_column}` and `{cfg.response_column}`, or conversations in `{cfg.messages_column}`"
        source = f"`{shown(cfg.data)}` (rows from columns {columns})"
    rows = (
        f"{data['train_rows']} training rows, {data['val_rows']} validation rows ({data['summary']})"
        if "train_rows" in data
        else "not recorded (the experiment predates the record)"
    )
    lines = [
        "## Data",
        "",
        f"- Source: {source}",
        f"- Rows: {rows}",
        f"- Validation: {cfg.val_fraction:.0%} of the rows held out (split seed {cfg.data_seed})",
        f"- max_length: {cfg.max_length} tokens (prompts capped at half); longer rows: {cfg.length_policy}; "
        f"batches: {cfg.collate}",
    ]
    for key in ("include_sources", "exclude_sources", "train_only_sources"):
        if value := getattr(cfg, key):
            lines.append(f"- {key}: {value}")
    lines += ["", *prompt_format_lines(cfg, data)]
    return lines


def prompt_format_lines(cfg: TrialConfig, data: dict[str, Any]) -> list[str]:
    learned = "The loss is on the answers only, each ended by the tokenizer's EOS token (dropped where a row is cut)."
    if cfg.prompt_format == "chat_template":
        return [f"Prompt format: the tokenizer's own chat template, saved with it in this folder. {learned}"]
    template = data.get("gpt4all_template")
    if not template:
        return [f"Prompt format: gpt4all (its template not recorded). {learned}"]
    return [
        f"Prompt format: gpt4all, each user turn in its template. {learned}",
        "",
        "```text",
        template.replace(PROMPT_PLACEHOLDER, "<prompt>") + "<response>",
        "```",
    ]


def base_path(model: str, folder: Path) -> str:
    """The base model as the loading code names it: its Hub id, or a local base folder relative to
    best/ (the code runs from inside it; no folder of this machine's is written out whole)."""
    return hub_base(model) or os.path.relpath(model, folder)


def recipe_value(value: Any, name: str) -> str:
    if value == "":
        return "(unset)"
    return shown(value) if name in ("model", "deepspeed") else str(value)


def recipe_section(cfg: TrialConfig, best: BestTrial, facts: CardFacts) -> list[str]:
    sampled = best.record.params
    listed = [
        f
        for f in fields(TrialConfig)
        if f.metadata.get("group") in RECIPE_GROUPS
        and f.name not in sampled
        and f.name not in NOT_RECIPE
        and (cfg.method == "lora" or f.name not in LORA_ONLY)
    ]
    lines = ["## Winning configuration", "", "Sampled by the search:", "", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in sampled.items()]
    lines += ["", "Fixed for every trial:", "", "| setting | value |", "|---|---|"]
    lines += [f"| {f.name} | {recipe_value(getattr(cfg, f.name), f.name)} |" for f in listed]
    if TRIAL_CONFIG in facts.files:
        lines += ["", f"Every setting: `{TRIAL_CONFIG}` in this folder."]
    return lines


def ds_config_section(cfg: TrialConfig, facts: CardFacts) -> list[str]:
    lines = ["## DeepSpeed config", ""]
    if facts.ds_config is None:
        return [*lines, "Not recorded."]
    merged = f", generated from its settings with `{shown(cfg.deepspeed)}` merged over them" if cfg.deepspeed else ""
    return [
        *lines,
        f"The config the trial's DeepSpeed engine ran with{merged}:",
        "",
        "```json",
        json.dumps(facts.ds_config, indent=2),
        "```",
    ]


def loading_section(cfg: TrialConfig, adapter: bool, folder: Path, settings: dict[str, Any]) -> list[str]:
    remote = ", trust_remote_code=True" if cfg.trust_remote_code else ""
    if not adapter:
        note = "The model and its tokenizer (the one it was trained with), with transformers:"
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"path = {HERE!r}  # {HERE_MEANS}",
            f"tokenizer = AutoTokenizer.from_pretrained(path{remote})",
            f"model = AutoModelForCausalLM.from_pretrained(path{remote})",
        ]
    elif cfg.model in EMBEDDED_MODELS:
        note = (
            f"A LoRA adapter on the built-in `{cfg.model}`, which exists nowhere but in gpt4all-ray: its "
            "`load_checkpoint` rebuilds the seeded base model from `trial_config.json` and puts the adapter on it."
        )
        code = [
            "from pathlib import Path",
            "",
            "from gpt4all_ray.inspection.evaluate import load_checkpoint",
            "",
            f"path = Path({HERE!r})  # this folder, run from inside it (downloaded, if it comes from the Hub)",
            "model, tokenizer, trial_config = load_checkpoint(path)",
        ]
    else:
        note = (
            "A LoRA adapter, loaded onto its base model with PEFT. Where the base tokenizer had no pad token, "
            f"training added one and grew the embeddings to fit it (to a multiple of {EMBEDDING_MULTIPLE} rows); the "
            "adapter carries the grown rows, so the base must be grown the same way first."
        )
        code = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"path = {HERE!r}  # {HERE_MEANS}",
            f"tokenizer = AutoTokenizer.from_pretrained(path{remote})",
            f"base = AutoModelForCausalLM.from_pretrained({base_path(cfg.model, folder)!r}{remote})",
            "if base.get_input_embeddings().num_embeddings < len(tokenizer):",
            f"    base.resize_token_embeddings(len(tokenizer), pad_to_multiple_of={EMBEDDING_MULTIPLE})",
            "model = PeftModel.from_pretrained(base, path)",
        ]
    code += generation_lines(cfg, settings)
    return ["## How to load it", "", note, "", "```python", *code, "```"]


def generation_lines(cfg: TrialConfig, settings: dict[str, Any]) -> list[str]:
    """An answer to one prompt: greedy, as the generation probes answered, the prompt laid out as
    in training (its template's tokens without special ones added)."""
    template = (settings.get("data") or {}).get("gpt4all_template")
    if cfg.prompt_format == "chat_template":
        prompt = [
            f'messages = [{{"role": "user", "content": {json.dumps(EXAMPLE_PROMPT)}}}]',
            "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
            'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # the whole text, as trained',
        ]
    elif template:
        # The template's head, the prompt and its tail are tokenized apart, as in training: tokenized
        # whole, a SentencePiece tokenizer would join their edges into other tokens.
        head, tail = template.split(PROMPT_PLACEHOLDER)
        prompt = [
            "import torch",
            "",
            f"parts = [{head!r}, {EXAMPLE_PROMPT!r}, {tail!r}]  # tokenized apart, as in training",
            'ids = [t for part in parts for t in tokenizer(part, add_special_tokens=False)["input_ids"]]',
            'inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}',
        ]
    else:
        return []
    return [
        "",
        *prompt,
        "output = model.generate(",
        f"    **inputs, max_new_tokens={cfg.probe_max_new_tokens}, do_sample=False,",
        "    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,",
        ")",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
    ]


def search_command(exp_dir: Path, settings: dict[str, Any]) -> str | None:
    """The `gpt4all-ray tune` command that ran the search, from experiment.json."""
    if "space" not in settings:
        return None
    words = ["gpt4all-ray", "tune", "--space", shown(settings["space"]), "--name", exp_dir.name]
    words += ["--num-trials", str(settings.get("num_trials"))]
    for override in settings.get("overrides") or []:
        words += ["--set", override]
    return shlex.join(words)  # where results and checkpoints went (--results-dir, --storage) is left out


def found_section(facts: CardFacts) -> list[str]:
    requested = facts.settings.get("num_trials")
    of = f" of the {requested} asked for" if requested and requested != facts.trials else ""
    lines = [
        "## How it was found",
        "",
        f"Experiment `{facts.exp_dir.name}`: {facts.trials} trials{of}. Its leaderboard and summary are in the "
        f"experiment folder, the one above `best/` (rebuilt, this card with them, by `gpt4all-ray report "
        f"<results>/{facts.exp_dir.name}`).",
    ]
    if command := search_command(facts.exp_dir, facts.settings):
        lines += ["", "The search:", "", "```bash", command, "```"]
    return lines
