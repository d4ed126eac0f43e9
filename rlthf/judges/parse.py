"""Reading a judge's answer: strict, so that a verdict is either what the judge clearly said or nothing.

A wrong label costs more than a missing one: a missing label is reported and can be asked again, a misread one
silently enters the preference data. So the parser never guesses. The answer is read from

1. a JSON object with a ``preference`` key (the whole answer, code fences allowed), else
2. the LAST ``preference:`` in the text (a chain of thought may come first, or mention an earlier preference),
   whose value is the rest of its line (or the next line, when the line ends at the colon), else
3. the whole answer, when it is nothing but ``Response A``/``A`` (or B).

A value counts when it is exactly ``Response A``, ``Response B``, ``A`` or ``B``, in any case, with optional
quotes (straight or curly), markdown (``**``, ``_``, backticks), brackets and trailing punctuation. Anything
else is None: ``"Response A" or "Response B"`` (the format line parroted back), ``Response C``, a truncated
``"Resp``, a qualified ``Response A (mostly)``. Prose without a ``preference:`` line is None too, even when it
reads clearly to a person: "Response A is better than Response B", "Response B is not worse than Response A"
and "I would not pick Response A" all name both letters or negate one, and telling them apart is guessing.
"""
from __future__ import annotations

import json
import math
import re

_CURLY_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
# "preference", maybe wrapped in markdown or quotes (a JSON key), then ":" or "=".
_PREFERENCE_KEY = re.compile(r"""preference[*_`"']*\s*[:=]""", re.IGNORECASE)
_CHOICE = re.compile(r"(?:response\s*)?([ab])", re.IGNORECASE)
_DECORATION = " \t\r\n*_`[]()"   # markdown and brackets around a value
_TRAILING = " \t\r\n*_`[]()}.,;:!"  # what may follow a value: markdown, JSON's closing brace, punctuation
_CODE_FENCE = re.compile(r"^```[a-z]*\s*|\s*```$", re.IGNORECASE)


def parse_preference(text: str) -> str | None:
    """``"A"`` or ``"B"`` when ``text`` clearly states a preference in the answer format, else None."""
    if not text or not text.strip():
        return None
    text = text.translate(_CURLY_QUOTES)
    from_json = _json_preference(text)
    if from_json is not None:
        return _choice(from_json)
    keys = list(_PREFERENCE_KEY.finditer(text))
    if keys:
        return _choice(_value_after(text, keys[-1].end()))
    return _choice(text)


def parse_logprobs(logprob_a: float, logprob_b: float) -> str | None:
    """``"A"`` or ``"B"``, whichever answer token is more likely; None on NaN or a tie."""
    if math.isnan(logprob_a) or math.isnan(logprob_b) or logprob_a == logprob_b:
        return None
    return "A" if logprob_a > logprob_b else "B"


def _json_preference(text: str) -> str | None:
    """The ``preference`` value of an answer that is one JSON object, else None."""
    try:
        obj = json.loads(_CODE_FENCE.sub("", text.strip()))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    values = [v for k, v in obj.items() if str(k).strip().lower() == "preference"]
    # A non-string value (a list, a number) is no answer; "" makes _choice return None.
    return values[-1] if values and isinstance(values[-1], str) else ("" if values else None)


def _value_after(text: str, start: int) -> str:
    """The rest of the line after a ``preference:`` key; the next non-empty line when that is empty."""
    rest = text[start:]
    line, _, after = rest.partition("\n")
    if line.strip(_DECORATION):
        return line
    for next_line in after.split("\n"):
        if next_line.strip():
            return next_line
    return ""


def _choice(value: str) -> str | None:
    """``"A"``/``"B"`` when ``value`` is exactly one answer (see the module docstring), else None."""
    value = value.strip(_DECORATION)
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        if end < 0:  # an unclosed quote: the answer was cut off
            return None
        if value[end + 1:].strip(_TRAILING):  # e.g. `"Response A" or "Response B"`
            return None
        value = value[1:end]
    match = _CHOICE.fullmatch(value.strip(_TRAILING))
    return match.group(1).upper() if match else None
