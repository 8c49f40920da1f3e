"""The embedded default data set: GPT4All-style rows (prompt, response, source), made in-process.

Families differ in difficulty and all have exact answers, except `creative`, whose responses are
random words: like the "Generate a story about ..." cluster in GPT4All-J's data, it cannot be
learned, only memorised. Copy rows have a long tail of lengths so that some exceed max_length.
Same seed, same rows, byte for byte.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
"""prompt, response, source (strings); a conversation also has messages (role/content turns)."""

_SYLLABLES = ["ka", "lo", "mi", "ran", "te", "zu", "vor", "el", "dan", "pi", "sho", "mar", "qui", "tes", "nor"]
_WORDS = (
    "apple river stone cloud green quick silver lamp table window garden bright yellow music paper "
    "ocean tiger forest candle winter summer bridge mirror rocket pencil orange planet castle button "
    "dragon forest valley thunder meadow copper falcon harbor island jungle kettle ladder marble "
    "needle oyster pepper quartz saddle tunnel violet walnut zephyr anchor basket cactus desert"
).split()
_NOUNS = ["dragon", "robot", "sailor", "city", "garden", "storm", "clock", "wizard", "river", "friendship"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _facts() -> dict[str, str]:
    # Fixed "world knowledge": the same table for every data seed, so lookup is learnable.
    rng = random.Random(20230328)
    facts: dict[str, str] = {}
    while len(facts) < 40:
        facts[_name(rng, 3)] = _name(rng, 2)
    return facts


FACTS = _facts()


def _copy(rng: random.Random) -> Row:
    # Mostly short, with a heavy tail: about 1 row in 12 is longer than 128 tokens.
    n = rng.randint(3, 12) if rng.random() < 0.85 else int(12 + rng.paretovariate(1.2) * 20)
    text = " ".join(rng.choice(_WORDS) for _ in range(min(n, 400)))
    return {"prompt": f"Repeat this text exactly: {text}", "response": text}


_LOOKUP_TEMPLATES = [
    "What is the capital of {}?",
    "Name the capital city of {}.",
    "Which city is the capital of {}?",
    "Tell me the capital of {}.",
]


def _lookup(rng: random.Random) -> Row:
    # Several phrasings per fact, so a fact held out in one phrasing was seen in another.
    country = rng.choice(sorted(FACTS))
    prompt = rng.choice(_LOOKUP_TEMPLATES).format(country)
    return {"prompt": prompt, "response": f"The capital of {country} is {FACTS[country]}."}


def _counting(rng: random.Random) -> Row:
    word = _name(rng, rng.randint(2, 4)).lower()
    letter = rng.choice(sorted(set(word)))
    return {
        "prompt": f"How many times does the letter '{letter}' appear in '{word}'?",
        "response": str(word.count(letter)),
    }


def _reversal(rng: random.Random) -> Row:
    word = _name(rng, rng.randint(2, 4)).lower()
    return {"prompt": f"Reverse the letters of the word '{word}'.", "response": word[::-1]}


def _arithmetic(rng: random.Random) -> Row:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"prompt": f"What is {a} {op} {b}?", "response": str(value)}


def _code(rng: random.Random) -> Row:
    k = rng.randint(1, 30)
    op, verb, stem = rng.choice([("+", "adds", "add"), ("*", "multiplies", "times"), ("-", "subtracts", "minus")])
    name = f"{stem}_{k}"
    preposition = {"+": "to", "*": "by", "-": "from"}[op]
    return {
        "prompt": f"Write a Python function {name}(x) that {verb} {k} {preposition} x.",
        "response": f"```python\ndef {name}(x):\n    return x {op} {k}\n```",
    }


def _creative(rng: random.Random) -> Row:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30)))
    return {"prompt": f"Write a short story about a {rng.choice(_NOUNS)}.", "response": words.capitalize() + "."}


FAMILIES: dict[str, tuple[float, Callable[[random.Random], Row]]] = {
    "copy": (0.18, _copy),
    "lookup": (0.15, _lookup),
    "counting": (0.12, _counting),
    "reversal": (0.12, _reversal),
    "arithmetic": (0.15, _arithmetic),
    "code": (0.13, _code),
    "creative": (0.15, _creative),
}


def generate_rows(n: int, seed: int = 0) -> list[Row]:
    """`n` rows with fields prompt, response, source (the family name)."""
    rng = random.Random(seed)
    names = list(FAMILIES)
    weights = [FAMILIES[f][0] for f in names]
    rows = []
    for _ in range(n):
        family = rng.choices(names, weights)[0]
        row = FAMILIES[family][1](rng)
        rows.append({"prompt": row["prompt"], "response": row["response"], "source": family})
    return rows


def to_jsonl(rows: list[Row]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
