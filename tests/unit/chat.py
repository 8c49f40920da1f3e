"""A chat template as instruct tokenizers carry one (ChatML's layout, EOS ending each answer), for
the tests of prompt_format: chat_template on the built-in tokenizer and a saved model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    # A newline after a block tag is trimmed (transformers renders with trim_blocks), so it is spelled out.
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def with_chat_template(tokenizer: Any, template: str = CHAT_TEMPLATE) -> Any:
    """A copy of the tokenizer carrying `template`."""
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = template
    return chat


def conversations_file(path: Path, rows: list[dict[str, str]], every: int = 3, system: bool = True) -> Path:
    """Rows as a JSONL of conversations: every `every`-th row a two-exchange conversation (with a
    system turn first if `system`), the rest one exchange; the source column kept."""
    import json

    lines = []
    for i, row in enumerate(rows):
        turns = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        if i % every == 0:
            turns = [{"role": "system", "content": "Answer briefly."}] * system + [*turns, *turns]
        lines.append(json.dumps({"messages": turns, "source": row["source"]}))
    path.write_text("\n".join(lines) + "\n")
    return path
