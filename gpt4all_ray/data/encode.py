"""Rows -> token ids and labels in a prompt format: the loss on the answers only, conditional
EOS, capped prompts.

A row is a prompt/response pair or a conversation (row["messages"]: role/content turns, the last
an assistant turn); a pair is the conversation of one user and one assistant turn. Every
assistant turn is learned, up to and including the EOS that ends it; nothing else is.

Two formats (fixed.prompt_format):
- gpt4all: GPT4All's `### Prompt:` / `### Response:` around each user turn, EOS after each answer.
- chat_template: the tokenizer's own chat template (apply_chat_template), as an instruct model
  was trained. Each assistant turn is told apart by rendering the conversation up to it with the
  generation prompt and up to its end: the tokens between are the turn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpt4all_ray.data.synthetic import Row

IGNORE = -100
PROMPT_HEAD = "### Prompt:\n"
RESPONSE_HEAD = "\n### Response:\n"
Message = dict[str, str]
Span = tuple[int, int]
"""[start, end) of a learned stretch of a row's token ids."""


@dataclass
class EncodeReport:
    rows: int = 0
    with_eos: int = 0
    truncated: int = 0
    prompts_capped: int = 0
    truncated_rows: list[int] = field(default_factory=list)
    dropped_too_long: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def prompt_text(prompt: str) -> str:
    return PROMPT_HEAD + prompt + RESPONSE_HEAD


def turns(row: Row) -> list[Message]:
    """A row's conversation: its messages, or its prompt and response as one exchange."""
    return row.get("messages") or [
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["response"]},
    ]


def plain_text(row: Row) -> str:
    """The row in GPT4All's template, as text (what a built-in tokenizer is trained on)."""
    return "".join(
        prompt_text(m["content"]) if m["role"] == "user" else m["content"] for m in turns(row) if m["role"] != "system"
    )


class FormatError(ValueError):
    """A row the prompt format cannot render; the message names the row."""


class NoChatTemplate(ValueError):
    """prompt_format chat_template with a tokenizer that has none."""


class NoRoom(ValueError):
    """A max_length whose half the prompt template alone fills."""


class PromptEncoder:
    """Prompt -> the token ids a model sees before its response in GPT4All's template: the
    template around the prompt, the prompt capped at half of max_length (as GPT4All did)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.head = tokenizer(PROMPT_HEAD, add_special_tokens=False)["input_ids"]
        self.tail = tokenizer(RESPONSE_HEAD, add_special_tokens=False)["input_ids"]
        self.budget = max_length // 2 - len(self.head) - len(self.tail)
        if self.budget < 1:
            raise NoRoom(f"max_length {max_length} leaves no room for a prompt after the template")

    def __call__(self, prompt: str) -> tuple[list[int], bool]:
        """(ids, whether the prompt was capped)."""
        return self.wrap(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def wrap(self, body: list[int]) -> tuple[list[int], bool]:
        """A tokenized prompt in the template, capped."""
        return self.head + body[: self.budget] + self.tail, len(body) > self.budget


@dataclass(frozen=True)
class Encoded:
    """One row in a prompt format, before the max_length rules."""

    ids: list[int]
    spans: list[Span]
    capped: bool


def _where(first: int, i: int, row: Row) -> str:
    return f"row {first + i} (source {row.get('source')!r})"


class Gpt4allFormat:
    """GPT4All's template; each user turn's text in it, each answer followed by EOS. Only the
    first user turn is capped (the prompt before the first answer)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.prompt = tokenizer, PromptEncoder(tokenizer, max_length)
        self.eos = tokenizer.eos_token_id

    def encode(self, rows: Sequence[Row], first: int = 0) -> list[Encoded]:
        conversations = [turns(row) for row in rows]
        # One batch call for every turn's text: a fast tokenizer encodes it on all cores.
        contents = iter(token_ids(self.tokenizer, [m["content"] for conv in conversations for m in conv]))
        out = []
        for i, (row, conversation) in enumerate(zip(rows, conversations, strict=True)):
            ids: list[int] = []
            spans: list[Span] = []
            capped = False
            for m in conversation:
                body = next(contents)
                if m["role"] == "user":
                    if spans or ids:  # a later turn: the history is not capped
                        ids += self.prompt.head + body + self.prompt.tail
                    else:
                        wrapped, capped = self.prompt.wrap(body)
                        ids += wrapped
                elif m["role"] == "assistant":
                    spans.append((len(ids), len(ids) + len(body) + 1))
                    ids += body + [self.eos]
                else:
                    raise FormatError(
                        f"{_where(first, i, row)}: prompt_format gpt4all has no {m['role']} turn; "
                        "use prompt_format: chat_template, or leave the turn out of the data"
                    )
            out.append(Encoded(ids, spans, capped))
        return out


class ChatTemplateFormat:
    """The tokenizer's chat template. A row is the whole rendered conversation tokenized at once,
    as apply_chat_template(tokenize=True) gives it at inference; answer k is the tokens between the
    conversation up to it with the generation prompt, tokenized alone, and up to its end. The
    prompt before the first answer is capped at half of max_length by cutting the user turn before
    it (the template's own tokens stay whole)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise NoChatTemplate(
                f"the tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) has no chat "
                "template; use prompt_format: gpt4all, or a model whose tokenizer carries one"
            )
        self.tokenizer, self.max_length, self.half = tokenizer, max_length, max_length // 2
        self.eos = tokenizer.eos_token_id

    def render(self, messages: list[Message], generation: bool, where: str) -> str:
        try:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation))
        except Exception as err:  # noqa: BLE001 (a template raises what its author wrote: jinja's, ValueError, ...)
            raise FormatError(f"{where}: the chat template refused this conversation: {err}") from None

    def texts(self, messages: list[Message], where: str) -> list[str]:
        """For each answer: the conversation before it with the generation prompt, and through it.
        Each must begin with the one before (a template that rewrites earlier turns cannot mark
        answers); the last is the whole conversation."""
        out: list[str] = []
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                out += [self.render(messages[:k], True, where), self.render(messages[: k + 1], False, where)]
        if any(not later.startswith(earlier) for earlier, later in zip(out, out[1:], strict=False)):
            raise FormatError(
                f"{where}: the chat template does not render this conversation as a growing text (it changes "
                "earlier turns when later ones are added), so its answers cannot be told apart"
            )
        return out

    def encode(self, rows: Sequence[Row], first: int = 0) -> list[Encoded]:
        wheres = [_where(first, i, row) for i, row in enumerate(rows)]
        conversations = [turns(row) for row in rows]
        texts = [self.texts(conv, where) for conv, where in zip(conversations, wheres, strict=True)]
        ids = iter(token_ids(self.tokenizer, [text for row_texts in texts for text in row_texts]))
        out = []
        for conversation, row_texts, where in zip(conversations, texts, wheres, strict=True):
            encoded = self.marked([next(ids) for _ in row_texts], where, capped=False)
            out.append(self.capped(conversation, where) if encoded.spans[0][0] > self.half else encoded)
        return out

    def marked(self, prefixes: list[list[int]], where: str, capped: bool) -> Encoded:
        """The whole conversation's ids (the last prefix) with each answer's span, learned up to the
        EOS that ends it; what the template puts after that (a newline) is context, and after the
        last answer it is left out: a model never generates past its EOS."""
        ids, spans = prefixes[-1], []
        for before, through in zip(prefixes[::2], prefixes[1::2], strict=True):
            if ids[: len(before)] != before or ids[: len(through)] != through:
                raise FormatError(
                    f"{where}: tokenized whole, the conversation has other tokens where an answer starts or ends than "
                    "its text up to there tokenized alone (a token spans the boundary), so the answer cannot be marked"
                )
            answer = through[len(before) :]
            if self.eos not in answer:
                raise FormatError(
                    f"{where}: the chat template ends an assistant turn without the tokenizer's EOS token "
                    f"{self.tokenizer.eos_token!r}; a model trained on it would not stop"
                )
            spans.append((len(before), len(through) - answer[::-1].index(self.eos)))
        return Encoded(ids[: spans[-1][1]], spans, capped)

    def capped(self, conversation: list[Message], where: str) -> Encoded:
        """The conversation with the user turn before its first answer cut so that the prompt fits
        half of max_length. Its tokens are cut, decoded and rendered again; where a cut token
        re-encodes longer, the cut is made shorter. No spans: the system turn and template alone
        leave no room (a row that does not fit, under length_policy)."""
        user = next(k for k, m in enumerate(conversation) if m["role"] == "assistant") - 1

        def with_content(text: str) -> list[Message]:
            return [*conversation[:user], {**conversation[user], "content": text}, *conversation[user + 1 :]]

        def prompt_tokens(text: str) -> int:
            return len(token_ids(self.tokenizer, [self.render(with_content(text)[: user + 1], True, where)])[0])

        budget = self.half - prompt_tokens("")
        body = token_ids(self.tokenizer, [conversation[user]["content"]])[0]
        while budget >= 1:
            text = self.tokenizer.decode(body[:budget])
            excess = prompt_tokens(text) - self.half
            if excess <= 0:
                texts = self.texts(with_content(text), where)
                return self.marked(token_ids(self.tokenizer, texts), where, capped=True)
            budget -= excess
        return Encoded([], [], capped=True)


RowEncoder = Gpt4allFormat | ChatTemplateFormat


def row_encoder(tokenizer: Any, max_length: int, prompt_format: str = "gpt4all") -> RowEncoder:
    if prompt_format == "chat_template":
        return ChatTemplateFormat(tokenizer, max_length)
    return Gpt4allFormat(tokenizer, max_length)


def prompts_before_answer(encoder: RowEncoder, rows: Sequence[Row]) -> list[list[int]]:
    """What the model sees before a row's last answer, as in training (capped alike): the
    generation probes' prompts."""
    return [e.ids[: e.spans[-1][0]] for e in encoder.encode(rows)]


class TooLong(ValueError):
    """A row that does not fit max_length under length_policy=raise."""


BATCH_ROWS = 2048
"""Rows a tokenizer call encodes at once: a fast tokenizer encodes a batch on all cores."""


def encoded(
    rows: Sequence[Row],
    tokenizer: Any,
    max_length: int,
    length_policy: str,
    report: EncodeReport,
    prompt_format: str = "gpt4all",
) -> Iterator[list[tuple[list[int], list[Span]]]]:
    """Each batch of kept rows as (token ids, learned spans). A row keeps the EOS of its last
    answer, learned, only when it fits max_length untruncated (GPT4All appended EOS to truncated
    rows too, teaching the model to stop mid-answer). Prompts are capped at half of max_length, as
    GPT4All did, so every row keeps room for its answer. A row that still does not fit is
    truncated (no EOS), dropped (counted) or an error, by `length_policy`."""
    report.rows += len(rows)
    encoder = row_encoder(tokenizer, max_length, prompt_format)
    for first in range(0, len(rows), BATCH_ROWS):
        batch = rows[first : first + BATCH_ROWS]
        kept = []
        for i, (row, e) in enumerate(zip(batch, encoder.encode(batch, first), strict=True), start=first):
            report.prompts_capped += e.capped
            no_room = not e.spans  # the system turn and template alone pass half of max_length
            if no_room and length_policy != "raise":
                report.dropped_too_long.append(i)  # truncated, it would learn nothing: dropped, counted
            elif no_room:
                raise TooLong(
                    f"row {i} (source {row.get('source')!r}): its system turn and the chat template's tokens before "
                    f"the first answer pass half of max_length {max_length} (length_policy: raise)"
                )
            elif len(e.ids) <= max_length:
                kept.append((e.ids, e.spans))
                report.with_eos += 1
            elif length_policy == "drop":
                report.dropped_too_long.append(i)
            elif length_policy == "raise":
                prompt = e.spans[0][0]
                raise TooLong(
                    f"row {i} (source {row.get('source')!r}): prompt {prompt} + the rest {len(e.ids) - prompt} tokens "
                    f"(answers, EOS) do not fit max_length {max_length} (length_policy: raise)"
                )
            else:
                spans = [(start, min(end, max_length)) for start, end in e.spans if start < max_length]
                kept.append((e.ids[:max_length], spans))
                report.truncated += 1
                report.truncated_rows.append(i)
        yield kept


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """The texts' token ids, no special tokens added. A fast tokenizer's Rust batch call straight:
    transformers' own call adds a Python dict per row (a sixth of the time at 400k rows)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    # As transformers' call does: no truncation or padding a tokenizer.json may carry.
    backend.no_truncation()
    backend.no_padding()
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


def example(ids: list[int], spans: Sequence[Span]) -> Example:
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return Example(ids, labels)


def encode_rows(
    rows: Sequence[Row],
    tokenizer: Any,
    max_length: int,
    length_policy: str = "truncate",
    prompt_format: str = "gpt4all",
) -> tuple[list[Example], EncodeReport]:
    """Rows -> examples in memory (inspection and the plan; a trial maps the tokenized cache)."""
    report = EncodeReport()
    batches = encoded(rows, tokenizer, max_length, length_policy, report, prompt_format)
    return [example(ids, spans) for batch in batches for ids, spans in batch], report
