"""best/README.md: the model card `gpt4all-ray report` (and the search, through the same
build_report) writes beside the best checkpoint. Each stored experiment here is built as a search
leaves one: data prepared and recorded as `gpt4all-ray tune` does, Tune's trial folders with their
configs, and a real tiny model saved by the workers' save_model as the winner's best checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub import ModelCard, ModelCardData

from gpt4all_ray.cli.tune import data_record
from gpt4all_ray.config import EMBEDDED_MODELS, TrialConfig
from gpt4all_ray.data import load_split
from gpt4all_ray.data.cache import prepare
from gpt4all_ray.data.encode import prompts_before_answer, row_encoder
from gpt4all_ray.evaluation import StopReason
from gpt4all_ray.experiment import report
from gpt4all_ray.experiment.files import DATA_CACHE, FORMAT, SETTINGS, tune_dir
from gpt4all_ray.experiment.model_card import ADAPTER_CONFIG, CARD, EXAMPLE_PROMPT, CardFacts, model_card
from gpt4all_ray.experiment.records import BestTrial, TrialRecord
from gpt4all_ray.train.checkpoint import save_model
from gpt4all_ray.train.ds_config import deepspeed_config
from gpt4all_ray.train.model import base_model, tiny_config, trainable
from tests.unit.chat import with_chat_template
from tests.unit.test_results import epochs

WINNER, RUNNER_UP, FAILED = "a1b2c3d4", "e5f60718", "9a0b1c2d"
PARAMS: dict[str, dict[str, Any]] = {
    WINNER: {"learning_rate": 0.003756, "warmup_steps": 25},
    RUNNER_UP: {"learning_rate": 0.0005, "warmup_steps": 5},
    FAILED: {"learning_rate": 0.3, "warmup_steps": 0},
}
HISTORIES = {  # validation loss per epoch, the workers' stop reason at each
    WINNER: ([3.0, 2.4, 2.5], ["", "", "diverged"]),
    RUNNER_UP: ([3.1, 2.6], ["", "completed"]),
}
WORKERS = 2
STEPS_PER_EPOCH = 17
PROBED = {"probe_stop_rate": 0.9375, "probe_mean_new_tokens": 6.5, "probe_repetition_rate": 0.25}
"""What every evaluation reports of its best checkpoint's generation probes."""
SETTINGS_GIVEN = {
    "space": "search_spaces/tiny_cpu.yaml",
    "overrides": ["tune.searcher=random"],
    "num_trials": 4,  # one more than stored: the card says how many ran of how many asked
    "storage": None,
    "format": FORMAT,
}
LOCAL = "local"  # a base model in a local folder (a Hub model's stand-in: nothing is downloaded)


@dataclass
class Search:
    exp_dir: Path
    trained: Any
    """The winner's model as its workers saved it."""
    tokenizer: Any

    @property
    def card(self) -> str:
        return (self.exp_dir / "best" / CARD).read_text()


def local_base(folder: Path) -> Path:
    """A tiny GPT-J with a tokenizer that has no pad token (as LLaMA's): training adds one and grows
    the embeddings, so a LoRA adapter must carry the grown rows. Its tokenizer has a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    rows = load_split(TrialConfig(data_rows=300)).train
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()  # decode(encode(text)) == text: the chat format's prompt cap relies on it
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["</s>"], initial_alphabet=alphabet)
    raw.train_from_iterator([r["prompt"] + r["response"] for r in rows], trainer)
    tokenizer = with_chat_template(PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>"))
    config = tiny_config("tiny-gptj", len(tokenizer))
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def trained_model(cfg: TrialConfig, tokenizer: Any) -> tuple[Any, bool]:
    """The trial's model with every trainable weight moved off its initial value (LoRA's B starts
    at zero: an adapter left untouched would load as a no-op), and whether its embeddings grew."""
    import torch

    base, grew = base_model(cfg, tokenizer)
    model = trainable(base, cfg)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=noise))
    return model.eval(), grew


def stored_search(
    root: Path, base: str, method: str, prompt_format: str = "gpt4all", record_data: bool = True
) -> Search:
    model = base if base in EMBEDDED_MODELS else str(local_base(root / "base"))
    fixed = TrialConfig(model=model, method=method, prompt_format=prompt_format, data_rows=300, probe_max_new_tokens=8)
    exp = root / "tiny_cpu-20270101-120000"
    data = prepare(fixed, exp / DATA_CACHE)  # as `gpt4all-ray tune` prepares it before the trials
    settings = SETTINGS_GIVEN | ({"data": data_record(data)} if record_data else {})
    (exp / SETTINGS).write_text(json.dumps(settings))
    for index, (trial_id, params) in enumerate(PARAMS.items(), start=1):
        cfg = dataclasses.replace(fixed, **params)
        folder = tune_dir(exp) / f"trial_driver_{trial_id}_{index:05d}_{index}_learning_rate={params['learning_rate']}"
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps(params))
        (folder / "trial_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        (folder / "ds_config.json").write_text(json.dumps(deepspeed_config(cfg, WORKERS)))
        if trial_id not in HISTORIES:
            (folder / "error.txt").write_text("RuntimeError: CUDA out of memory")
            continue
        history = epochs(*HISTORIES[trial_id], exp / "ray" / "train" / trial_id)
        for row in history:  # what epochs() leaves out: steps and probes
            row |= {"step": STEPS_PER_EPOCH * row["epoch"], "best_step": STEPS_PER_EPOCH * row["best_epoch"]} | PROBED
        (folder / "result.json").write_text("".join(json.dumps(row) + "\n" for row in history))
        if trial_id == WINNER:
            at_best = [row for row in history if "checkpoint_path" in row][-1]
            checkpoint = Path(at_best["checkpoint_path"])
            (checkpoint / "model.safetensors").unlink()  # epochs()'s stand-in: the real model replaces it
            trained, grew = trained_model(cfg, data.tokenizer)
            engine = SimpleNamespace(module=trained)
            save_model(engine, data.tokenizer, cfg, deepspeed_config(cfg, WORKERS), at_best, checkpoint, 0, grew)
    assert report.main([str(exp)]) == 0  # `gpt4all-ray report runs/<experiment>`
    return Search(exp, trained, data.tokenizer)


Searched = Callable[..., Search]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Searched:
    """One stored experiment per (base, method, prompt format), built when a test first asks for it."""
    built: dict[tuple[str, ...], Search] = {}

    def search(base: str, method: str, prompt_format: str = "gpt4all") -> Search:
        key = (base, method, prompt_format)
        if key not in built:
            built[key] = stored_search(tmp_path_factory.mktemp("-".join(key)), *key)
        return built[key]

    return search


VARIANTS = [  # (base, method, prompt format); a built-in model has no chat template
    ("tiny-gptj", "full", "gpt4all"),
    ("tiny-gptj", "lora", "gpt4all"),
    (LOCAL, "full", "chat_template"),
    (LOCAL, "lora", "gpt4all"),
    (LOCAL, "lora", "chat_template"),
]


def code_block(card: str, language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", card, re.S)
    return block


def leaderboard_cells(exp_dir: Path, trial_id: str) -> dict[str, str]:
    header, _, *rows = (exp_dir / "leaderboard.md").read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in [header, *rows]]
    (row,) = [r for r in cells[1:] if r[0] == trial_id]
    return dict(zip(cells[0], row, strict=True))


@pytest.mark.parametrize(("base", "method", "prompt_format"), VARIANTS)
def test_the_hub_reads_the_cards_metadata(searched: Searched, base: str, method: str, prompt_format: str) -> None:
    search = searched(base, method, prompt_format)
    data = ModelCard(search.card).data
    assert isinstance(data, ModelCardData)
    adapter = (search.exp_dir / "best" / ADAPTER_CONFIG).is_file()
    assert adapter == (method == "lora")  # PEFT saves an adapter, not a merged model
    assert data.library_name == ("peft" if adapter else "transformers")
    assert data.base_model is None  # neither a built-in model nor a local folder is on the Hub
    tags = data.tags or []
    assert {"gpt4all-ray", "fine-tuned"} <= set(tags) and ("lora" in tags) == (method == "lora")
    assert data.pipeline_tag == "text-generation" and data.license is None and data.datasets is None


def test_the_card_holds_the_winners_configuration_row_and_deepspeed_config(searched: Searched) -> None:
    search = searched("tiny-gptj", "full")
    exp, card = search.exp_dir, search.card
    best = json.loads((exp / "best.json").read_text())
    assert best["trial_id"] == WINNER
    assert f"# {exp.name}: best trial {WINNER}" in card
    for name, value in best["params"].items():
        assert f"| {name} | {value} |" in card
    for setting in ("model", "method", "global_batch", "zero_stage", "precision"):
        assert f"| {setting} | {best['config'][setting]} |" in card
    assert "| lora_r |" not in card  # a full fine-tune has no LoRA settings that matter
    for column, cell in leaderboard_cells(exp, WINNER).items():
        assert f"| {column} | {cell} |" in card
    shipped = json.loads((exp / "best" / "ds_config.json").read_text())
    assert json.loads(code_block(card, "json")) == shipped
    (trial_folder,) = tune_dir(exp).glob(f"trial_driver_{WINNER}_*")
    assert shipped == json.loads((trial_folder / "ds_config.json").read_text())  # the driver's copy agrees


def test_the_card_says_how_it_stopped_and_was_found_in_summary_mds_words(searched: Searched) -> None:
    search = searched("tiny-gptj", "full")
    exp, card = search.exp_dir, search.card
    summary = (exp / "summary.md").read_text()
    (stopped,) = [line for line in summary.splitlines() if line.startswith(f"- {WINNER}:")]
    (why,) = [line for line in summary.splitlines() if line.startswith("Why it won:")]
    (probes,) = [line for line in summary.splitlines() if line.startswith("Generation probes")]
    assert StopReason.DIVERGED.value in stopped and stopped in card and why in card and probes in card
    assert "with its model card `best/README.md`" in summary
    settings = json.loads((exp / SETTINGS).read_text())
    data = settings["data"]
    assert f"{data['train_rows']} training rows, {data['val_rows']} validation rows" in card
    assert data["gpt4all_template"].replace("{prompt}", "<prompt>") in card
    assert f"{len(PARAMS)} trials of the {settings['num_trials']} asked for" in card
    # Published as it stands: no folder of the machine the search ran on, anywhere in the card.
    assert str(exp.parent) not in card and str(Path.home()) not in card
    command = code_block(card, "bash").split()
    assert command[:4] == ["gpt4all-ray", "tune", "--space", settings["space"]]
    assert ["--name", exp.name] == command[4:6] and "--set" in command and settings["overrides"][0] in command


@pytest.mark.parametrize(("base", "method", "prompt_format"), VARIANTS)
def test_the_cards_snippet_loads_the_model_best_holds(
    searched: Searched, base: str, method: str, prompt_format: str
) -> None:
    """The card's Python, run as it stands: the model it loads computes what the trained one did
    (grown embedding rows included), and it answers a prompt laid out in the trial's format."""
    import torch

    search = searched(base, method, prompt_format)
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.chdir(search.exp_dir / "best"):  # as the card says
        exec(compile(code_block(search.card, "python"), CARD, "exec"), namespace)
    loaded, tokenizer = namespace["model"].eval(), namespace["tokenizer"]
    assert tokenizer.get_vocab() == search.tokenizer.get_vocab()
    ids = torch.arange(len(tokenizer)).unsqueeze(0)  # every token, a pad token added in training too
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, search.trained(input_ids=ids).logits)
    # The prompt as the trial's encoder lays it out before an answer (the generation probes' prompts).
    config = json.loads((search.exp_dir / "best.json").read_text())["config"]
    encoder = row_encoder(search.tokenizer, config["max_length"], config["prompt_format"])
    (in_training,) = prompts_before_answer(encoder, [{"prompt": EXAMPLE_PROMPT, "response": "-"}])
    prompt = namespace["inputs"]["input_ids"][0].tolist()
    assert prompt == in_training
    assert namespace["output"].shape[1] > len(prompt) and printed.getvalue().endswith("\n")


def test_an_experiment_without_a_data_record_or_shipped_deepspeed_config_still_gets_a_card(tmp_path: Path) -> None:
    """An experiment from before experiment.json recorded its data, and a checkpoint without the
    DeepSpeed config: the card says what is not known and takes the config its driver wrote."""
    search = stored_search(tmp_path, "tiny-gptj", "full", record_data=False)
    best = search.exp_dir / "best"
    (best / "ds_config.json").unlink()
    (best / CARD).unlink()
    assert report.main([str(search.exp_dir)]) == 0
    card = search.card
    (trial_folder,) = tune_dir(search.exp_dir).glob(f"trial_driver_{WINNER}_*")
    assert json.loads(code_block(card, "json")) == json.loads((trial_folder / "ds_config.json").read_text())
    assert "Rows: not recorded" in card and "prompt =" not in card


def card_of(cfg: TrialConfig, files: tuple[str, ...], ds_config: dict[str, Any] | None = None) -> str:
    """The card of a trial no test can train (a Hub base model): the report's facts made by hand."""
    record = TrialRecord("t", {}, best_val_loss=2.0, stop_reason=StopReason.COMPLETED)
    best = BestTrial(record, dataclasses.asdict(cfg), Path("/runs/exp/best"), 0.0, True)
    facts = CardFacts(
        Path("/runs/exp"), 1, {}, "lowest loss.", "Generation probes: none ran.", "- t", ds_config, {}, files
    )
    return model_card(best, facts)


@pytest.mark.parametrize("model", ["tiny-gptj", "EleutherAI/gpt-j-6b"])
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("data", ["embedded", "hf:nomic-ai/gpt4all-j-prompt-generations"])
def test_the_metadata_names_a_hub_base_model_and_data_set(model: str, method: str, data: str) -> None:
    card = card_of(TrialConfig(model=model, method=method, data=data), (ADAPTER_CONFIG,) if method == "lora" else ())
    metadata = ModelCard(card).data
    assert isinstance(metadata, ModelCardData)
    hub = model not in EMBEDDED_MODELS
    assert metadata.base_model == (model if hub else None)
    assert metadata.library_name == ("peft" if method == "lora" else "transformers")
    assert metadata.datasets == ([data.removeprefix("hf:")] if data.startswith("hf:") else None)
    if hub and method == "lora":  # the adapter goes onto the Hub model, grown as training grew it
        assert f"AutoModelForCausalLM.from_pretrained({model!r})" in card and "PeftModel.from_pretrained" in card


def test_a_users_deepspeed_file_is_named_beside_the_config_it_was_merged_into(tmp_path: Path) -> None:
    user_file = tmp_path / "ds.json"
    user_file.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}}))
    cfg = TrialConfig(deepspeed=str(user_file))
    ran = deepspeed_config(cfg, WORKERS)
    card = card_of(cfg, (), ran)
    assert f"with `{user_file.name}` merged over them" in card and json.loads(code_block(card, "json")) == ran
    assert str(tmp_path) not in card  # the name only: the card is for publishing


def test_a_report_with_no_usable_trial_leaves_no_earlier_best_or_card(tmp_path: Path) -> None:
    from gpt4all_ray.experiment.records import write_report

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / CARD).write_text("an earlier report's card")
    (tmp_path / "best.json").write_text("{}")
    lost = TrialRecord("t", {}, stop_reason=StopReason.ERROR)  # no checkpoint, no finite loss
    assert write_report(tmp_path, [lost], [], {}) is None
    assert not (tmp_path / "best").exists() and not (tmp_path / "best.json").exists()


def test_a_hub_data_set_is_named_only_when_it_is_a_hub_id() -> None:
    card = card_of(TrialConfig(data="hf:./my_local_dataset_folder"), ())
    assert ModelCard(card).data.datasets is None  # load_dataset takes a folder too; the Hub knows no such id


def test_the_cards_gpt4all_prompt_is_tokenized_as_training_tokenized_it() -> None:
    """With a SentencePiece-style tokenizer the template's edges join other tokens when tokenized
    whole; the card's code tokenizes head, prompt and tail apart, as PromptEncoder does."""
    from gpt4all_ray.data.encode import PromptEncoder, prompt_text
    from gpt4all_ray.experiment.files import PROMPT_PLACEHOLDER
    from gpt4all_ray.experiment.model_card import EXAMPLE_PROMPT, generation_lines
    from tests.unit.test_prompt_formats import sentencepiece_like_tokenizer

    tokenizer = sentencepiece_like_tokenizer()
    settings = {"data": {"gpt4all_template": prompt_text(PROMPT_PLACEHOLDER)}}
    lines = generation_lines(TrialConfig(), settings)
    prompt_code = "\n".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("output ="))])
    namespace: dict[str, Any] = {"tokenizer": tokenizer}
    exec(prompt_code, namespace)
    whole = tokenizer(prompt_text(EXAMPLE_PROMPT), add_special_tokens=False)["input_ids"]
    trained, _ = PromptEncoder(tokenizer, 512)(EXAMPLE_PROMPT)
    assert namespace["inputs"]["input_ids"][0].tolist() == trained != whole
