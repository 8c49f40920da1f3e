"""Prompt formats (gpt4all, chat_template) over pairs and conversations: the loss on the answers
only, EOS iff untruncated, prompts capped at half of max_length (property tests), and the errors a
user can meet, before Ray starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt4all_ray.config import SpecError, TrialConfig, load_spec
from gpt4all_ray.data import build_tokenizer, load_split
from gpt4all_ray.data.__main__ import main as data_main
from gpt4all_ray.data.cache import prepare
from gpt4all_ray.data.encode import (
    IGNORE,
    FormatError,
    NoChatTemplate,
    PromptEncoder,
    TooLong,
    encode_rows,
    prompts_before_answer,
    row_encoder,
    token_ids,
    turns,
)
from gpt4all_ray.data.sources import DataError, load_rows
from tests.unit.chat import CHAT_TEMPLATE, conversations_file, with_chat_template
from tests.unit.test_config import write

PLAIN = build_tokenizer(load_split(TrialConfig(data_rows=400)))
CHAT = with_chat_template(PLAIN)
EOS = PLAIN.eos_token_id
FORMATS = {"gpt4all": PLAIN, "chat_template": CHAT}

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=200)
exchange = st.tuples(text, text).map(
    lambda t: [{"role": "user", "content": t[0]}, {"role": "assistant", "content": t[1]}]
)
system = st.lists(text.map(lambda t: {"role": "system", "content": t}), max_size=1)
conversation = st.fixed_dictionaries(
    {"messages": st.tuples(system, st.lists(exchange, min_size=1, max_size=3)).map(lambda s: s[0] + sum(s[1], []))}
)
pair = st.fixed_dictionaries({"prompt": text, "response": text})
rows = st.lists(st.one_of(pair, conversation), min_size=1, max_size=6).map(
    lambda rs: [r | {"source": "s"} | ({"prompt": "p", "response": "r"} if "messages" in r else {}) for r in rs]
)


def template_tokens(row: dict, prompt_format: str) -> int:
    """Tokens of what comes before the first answer, the user's words left out (0 in gpt4all format,
    whose template fits any max_length the test draws)."""
    if prompt_format == "gpt4all":
        return 0
    conversation = turns(row)
    before = [*conversation[: conversation.index(next(m for m in conversation if m["role"] == "assistant"))]]
    before[-1] = {"role": "user", "content": ""}
    return len(token_ids(CHAT, [CHAT.apply_chat_template(before, tokenize=False, add_generation_prompt=True)])[0])


def learned_runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for j, label in enumerate(labels):
        if label == IGNORE:
            continue
        if not runs or labels[j - 1] == IGNORE:
            runs.append([])
        runs[-1].append(label)
    return runs


@settings(max_examples=80, deadline=None)
@given(rows=rows, max_length=st.integers(min_value=64, max_value=240), prompt_format=st.sampled_from(sorted(FORMATS)))
def test_only_answers_are_learned_eos_iff_untruncated_and_the_prompt_capped(
    rows: list[dict], max_length: int, prompt_format: str
) -> None:
    if prompt_format == "gpt4all":  # it has no system turn (refused: another test)
        rows = [
            r | {"messages": [m for m in r["messages"] if m["role"] != "system"]} if "messages" in r else r
            for r in rows
        ]
    tokenizer = FORMATS[prompt_format]
    examples, report = encode_rows(rows, tokenizer, max_length, "truncate", prompt_format)
    # A row whose system turn and template alone pass half of max_length is dropped and counted.
    kept = [i for i in range(len(rows)) if i not in report.dropped_too_long]
    assert len(examples) == len(kept) == report.with_eos + report.truncated
    assert [i for i in range(len(rows)) if template_tokens(rows[i], prompt_format) >= max_length // 2] == sorted(
        report.dropped_too_long
    )
    for i, e in zip(kept, examples, strict=True):
        row = rows[i]
        answers = [m["content"] for m in turns(row) if m["role"] == "assistant"]
        truncated = i in report.truncated_rows
        assert len(e.input_ids) == len(e.labels) <= max_length
        assert all(label in (IGNORE, token) for token, label in zip(e.input_ids, e.labels, strict=True))
        first = next(j for j, label in enumerate(e.labels) if label != IGNORE)
        assert first <= max_length // 2  # the capped prompt leaves the answer room
        # Every learned stretch is one answer's tokens and the EOS ending it, in order: an EOS is
        # learned only after a whole answer. Only a truncated row's last stretch is cut short.
        expected = [ids + [EOS] for ids in token_ids(tokenizer, answers)]
        runs = learned_runs(e.labels)
        for k, run in enumerate(runs):
            if run[-1] == EOS:
                assert run == expected[k]
            else:
                assert truncated and k == len(runs) - 1 and run == expected[k][: len(run)]
        # The last answer's EOS is learned iff the row fits untruncated.
        assert (runs == expected) == (not truncated)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({"prompt": text, "response": text, "source": st.just("s")}), max_size=5))
def test_a_pair_in_gpt4all_format_is_encoded_as_before(rows: list[dict]) -> None:
    max_length = 96
    encode, examples = PromptEncoder(PLAIN, max_length), encode_rows(rows, PLAIN, max_length)[0]
    for row, e in zip(rows, examples, strict=True):
        prompt, _ = encode(row["prompt"])
        response = PLAIN(row["response"], add_special_tokens=False)["input_ids"]
        expected = prompt + response + [EOS]
        assert e.input_ids == (expected if len(expected) <= max_length else (prompt + response)[:max_length])
    assert prompts_before_answer(row_encoder(PLAIN, max_length), rows) == [encode(r["prompt"])[0] for r in rows]


def test_chat_template_rows_are_the_template_rendered() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    (e,), report = encode_rows([{"messages": messages, "source": "s"}], CHAT, 256, "truncate", "chat_template")
    rendered = CHAT.apply_chat_template(messages, tokenize=False)
    through_last_eos = rendered[: rendered.rindex(CHAT.eos_token) + len(CHAT.eos_token)]
    assert CHAT.decode(e.input_ids) == through_last_eos
    assert e.input_ids == token_ids(CHAT, [through_last_eos])[0]  # the whole text tokenized, as at inference
    assert [CHAT.decode(run) for run in learned_runs(e.labels)] == ["4" + CHAT.eos_token, "6" + CHAT.eos_token]
    assert report.with_eos == 1
    # A probe's prompt is the conversation before its last answer, with the generation prompt.
    (prompt,) = prompts_before_answer(row_encoder(CHAT, 256, "chat_template"), [{"messages": messages}])
    assert CHAT.decode(prompt) == CHAT.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)


def test_a_long_prompt_is_cut_inside_the_user_turn_keeping_the_template() -> None:
    long = " ".join(["word"] * 400)
    row = {"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"}], "source": "s"}
    (e,), report = encode_rows([row], CHAT, 128, "truncate", "chat_template")
    prompt = e.input_ids[: next(j for j, label in enumerate(e.labels) if label != IGNORE)]
    assert report.prompts_capped == 1 and 56 <= len(prompt) <= 64  # cut to the cap, not far below
    text = CHAT.decode(prompt)
    assert text.startswith("<|im_start|>user\nword word") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert (
        CHAT.decode([t for t, label in zip(e.input_ids, e.labels, strict=True) if label != IGNORE]) == "ok<|endoftext|>"
    )


@pytest.mark.parametrize(
    ("template", "rows", "prompt_format", "error", "message"),
    [
        (None, [{"prompt": "a", "response": "b"}], "chat_template", NoChatTemplate, "has no chat template"),
        (
            None,
            [{"prompt": "a", "response": "b"}, {"messages": [{"role": "system", "content": "x"}], "source": "web"}],
            "gpt4all",
            FormatError,
            "row 1 (source 'web'): prompt_format gpt4all has no system turn",
        ),
        (
            CHAT_TEMPLATE.replace("{{ eos_token }}", "<|im_end|>"),
            [{"prompt": "a", "response": "b", "source": "s"}],
            "chat_template",
            FormatError,
            "row 0 (source 's'): the chat template ends an assistant turn without the tokenizer's EOS token",
        ),
        (
            "{% for m in messages[-1:] %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}A:{% endif %}",
            [{"prompt": "a", "response": "b", "source": "s"}],
            "chat_template",
            FormatError,
            "does not render this conversation as a growing text",
        ),
        (
            "{{ raise_exception('Conversation roles must alternate user/assistant') }}",
            [{"prompt": "a", "response": "b", "source": "s"}],
            "chat_template",
            FormatError,
            "row 0 (source 's'): the chat template refused this conversation: Conversation roles must alternate",
        ),
    ],
    ids=["no-template", "system-in-gpt4all", "no-eos", "not-a-prefix", "template-raises"],
)
def test_rows_a_format_cannot_render_are_refused_naming_the_row(
    template: str | None, rows: list[dict], prompt_format: str, error: type, message: str
) -> None:
    tokenizer = with_chat_template(PLAIN, template) if template else PLAIN
    for row in rows:
        row.setdefault("messages", None)
    with pytest.raises(error, match=re.escape(message)):
        encode_rows(rows, tokenizer, 128, "truncate", prompt_format)


CONVERSATION = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": "not json"}, "d.jsonl:1: column 'messages' is text that is not JSON"),
        ({"messages": []}, "d.jsonl:1: column 'messages' must hold a non-empty list of {role, content} turns"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "d.jsonl:1: messages[0]: expected {role: system | user |"),
        ({"messages": [*CONVERSATION, {"role": "system", "content": "x"}, *CONVERSATION]}, "messages[2]: a system"),
        ({"messages": CONVERSATION[:1]}, "d.jsonl:1: column 'messages' must end with an assistant turn"),
        ({"messages": [{"role": "system", "content": "x"}, CONVERSATION[1]]}, "messages[1]: expected a user turn"),
        ({"messages": [CONVERSATION[0], *CONVERSATION]}, "d.jsonl:1: messages[1]: expected an assistant turn"),
    ],
)
def test_a_bad_conversation_is_refused_naming_file_line_and_turn(tmp_path: Path, record: dict, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_rows(path)


def test_conversations_load_from_jsonl_and_csv_beside_pairs(tmp_path: Path) -> None:
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": CONVERSATION, "source": "chat"}) + "\n")
    (tmp_path / "pairs.csv").write_text(
        f'prompt,response,messages\nq,a,\n,,"{json.dumps(CONVERSATION).replace(chr(34), chr(34) * 2)}"\n'
    )
    rows = load_rows(tmp_path)
    assert [r.get("messages") for r in rows] == [CONVERSATION, None, CONVERSATION]
    assert [(r["prompt"], r["response"], r["source"]) for r in rows] == [
        ("hi", "hello", "chat"),
        ("q", "a", "pairs"),
        ("hi", "hello", "pairs"),
    ]


def test_the_build_of_conversations_equals_the_in_memory_encoding(tmp_path: Path) -> None:
    data = conversations_file(tmp_path / "chats.jsonl", load_split(TrialConfig(data_rows=120)).train, system=False)
    cfg = TrialConfig(data=str(data), max_length=96, val_fraction=0.1)
    built = prepare(cfg, tmp_path / "cache")
    split = load_split(cfg)
    assert sum(len(turns(r)) > 2 for r in split.train) > 0  # multi-turn rows are there
    examples, _ = encode_rows(split.train, built.tokenizer, cfg.max_length, cfg.length_policy, cfg.prompt_format)
    assert [(e.input_ids, e.labels) for e in examples] == [(e.input_ids, e.labels) for e in built.train]


def test_chat_template_on_a_built_in_model_is_refused_by_the_space(tmp_path: Path) -> None:
    path = write(tmp_path, {"fixed.prompt_format": "chat_template"})
    with pytest.raises(SpecError, match="fixed.prompt_format: chat_template needs the tokenizer's own chat template"):
        load_spec(path)


def test_chat_template_with_a_model_folder_without_one_is_refused_before_ray(tmp_path: Path) -> None:
    from gpt4all_ray.cli.preflight import check_model
    from gpt4all_ray.train.model import build_model

    folder = tmp_path / "model"
    build_model(TrialConfig(), PLAIN).save_pretrained(folder)
    PLAIN.save_pretrained(folder)
    spec = load_spec(write(tmp_path, {"fixed.model": str(folder), "fixed.prompt_format": "chat_template"}))
    with pytest.raises(SpecError, match=f"fixed.prompt_format: model {folder}: the tokenizer .* has no chat template"):
        check_model(spec)
    with_chat_template(PLAIN).save_pretrained(folder)
    check_model(spec)  # the same folder, its tokenizer now carrying one


def test_data_show_marks_the_masked_part_in_the_chat_template(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gpt4all_ray.train.model import build_model

    folder = tmp_path / "model"
    build_model(TrialConfig(), PLAIN).save_pretrained(folder)
    with_chat_template(PLAIN).save_pretrained(folder)
    data = conversations_file(tmp_path / "chats.jsonl", load_split(TrialConfig(data_rows=60)).train, every=1)
    argv = ["--data", str(data), "--model", str(folder), "--prompt-format", "chat_template", "--show", "1"]
    assert data_main([*argv, "--max-length", "256"]) == 0
    shown = capsys.readouterr().out.split("eos_token_id")[1].split("\n", 1)[1]
    first = load_split(TrialConfig(data=str(data))).train[0]["messages"]  # the CLI's split: the defaults
    user, answer = first[1]["content"], first[2]["content"]
    assert shown.startswith(f"«<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n")
    assert f"<|im_start|>assistant\n»{answer}<EOS>«\n<|im_start|>user\n" in shown


def sentencepiece_like_tokenizer() -> object:
    """A Metaspace tokenizer (Llama's and Mistral's pre-tokenizer: "▁" before each word, prepended
    at the start) with a zephyr-like template. Tokenizing pieces of a rendered conversation apart
    gives other tokens here than tokenizing it whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    raw.decoder = decoders.Metaspace(prepend_scheme="first")
    words = "what is the capital of france paris it is a city in europe answer briefly".split()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>", "<|user|>", "<|assistant|>"])
    raw.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\\n{% endif %}"
    )
    return tokenizer


def test_a_sentencepiece_tokenizers_rows_are_the_whole_text_tokenized() -> None:
    tokenizer = sentencepiece_like_tokenizer()
    messages = [{"role": "user", "content": "what is the capital of france"}, {"role": "assistant", "content": "paris"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    before = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    whole = token_ids(tokenizer, [rendered[: rendered.rindex("</s>") + 4]])[0]
    apart = token_ids(tokenizer, [before])[0] + token_ids(tokenizer, [rendered[len(before) :]])[0]
    assert apart[: len(whole)] != whole  # the trap: pieces tokenized apart are other tokens
    (e,), _ = encode_rows([{"messages": messages, "source": "s"}], tokenizer, 128, "truncate", "chat_template")
    assert e.input_ids == whole
    answer = [t for t, label in zip(e.input_ids, e.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(answer) == "paris</s>"


@pytest.mark.parametrize("policy", ["drop", "truncate", "raise"])
def test_a_system_turn_that_leaves_no_room_follows_the_length_policy(policy: str) -> None:
    long_system = [{"role": "system", "content": " ".join(["rule"] * 200)}, *CONVERSATION]
    rows = [{"prompt": "a", "response": "b", "source": "s"}, {"messages": long_system, "source": "web"}]
    if policy == "raise":
        with pytest.raises(TooLong, match=r"row 1 \(source 'web'\): its system turn and the chat template's tokens"):
            encode_rows(rows, CHAT, 128, policy, "chat_template")
        return
    examples, report = encode_rows(rows, CHAT, 128, policy, "chat_template")
    assert len(examples) == 1 and report.dropped_too_long == [1]  # counted, not silently lost
