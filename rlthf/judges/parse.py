"""Reading a model's answer: strict, so that a verdict is either what the judge clearly said or nothing.

A wrong label costs more than a missing one: a missing label is reported and can be asked again, a misread one
silently enters the preference data. So the parsers never guess, and they return None ("no verdict") for any
input at all: an answer too long, nested too deep, not text, or one that makes ``json``/``ast`` raise.

**Preference** (:func:`parse_preference`, the labeling judge). The answer is read from

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

**Log-probabilities** (:func:`parse_logprobs`): the more likely of the two answer tokens; None on NaN, +inf,
a tie or anything that is not a real number.

**Ranking** (:func:`parse_ranking`, the win-rate judge, AlpacaEval's format): after optional code fences, one
JSON or Python literal, a list of exactly two dicts ``{'model': 'model_1' | 'model_2', 'rank': 1 | 2}`` naming
both models and both ranks; the verdict is the model ranked first.

**Bounds.** Before any parsing, an answer that is not a string, is blank or is longer than
:data:`MAX_ANSWER_CHARS` (a ranking: :data:`MAX_RANKING_CHARS`) is refused (:func:`_readable`), and a literal
nested deeper than :data:`MAX_NESTING` brackets is never handed to ``json.loads``/``ast.literal_eval``
(:func:`_load_literal`), whose recursion is what a bracket bomb exhausts. What those two can still raise is
caught. The backends call the parsers through :func:`safe_parse`, so that even a parser bug costs one pair's
verdict, never a Ray Data batch.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import numbers
import re
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 32_000  # a judge answers in a line or a short rationale; 8k tokens of it is no answer
# A ranking is two short dicts (~70 characters), and ast.literal_eval takes ~0.1 s per 10k characters of literal.
MAX_RANKING_CHARS = 4_000
MAX_NESTING = 8  # brackets deeper than this are no answer; refuse before json/ast recurse into them
MODELS = ("model_1", "model_2")  # the names a ranking gives the two answers

# What json.loads and ast.literal_eval raise on hostile text (JSONDecodeError and UnicodeEncodeError are
# ValueErrors; a huge integer is a ValueError, "too many nested parentheses" a SyntaxError).
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError)
# An opening code fence, matched once at the start. Never search for a fence: a pattern like `\s*```$` tried at
# every position takes quadratic time on a long run of whitespace (23 s for 100k spaces).
_OPENING_FENCE = re.compile(r"```[a-z]*\s*", re.IGNORECASE)
# the characters that open or close a bracket or a string literal, and the escape inside one
_STRUCTURE = re.compile(r"""[\[\]{}()"'\\]""")

_CURLY_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
# "preference", maybe wrapped in markdown or quotes (a JSON key), then ":" or "=".
_PREFERENCE_KEY = re.compile(r"""preference[*_`"']*\s*[:=]""", re.IGNORECASE)
_CHOICE = re.compile(r"(?:response\s*)?([ab])", re.IGNORECASE)
_DECORATION = " \t\r\n*_`[]()"   # markdown and brackets around a value
_TRAILING = " \t\r\n*_`[]()}.,;:!"  # what may follow a value: markdown, JSON's closing brace, punctuation


# ----------------------------------------------------------------------------------------------- the parsers

def parse_preference(text: str) -> str | None:
    """The preference a judge's answer states in the answer format (see the module docstring).

    Parameters
    ----------
    text : str
        The judge's answer. Anything else, a blank text or one over :data:`MAX_ANSWER_CHARS` is no verdict.

    Returns
    -------
    {'A', 'B'} or None
        None when the answer does not clearly state one preference.
    """
    if not _readable(text, MAX_ANSWER_CHARS):
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
    """Whichever answer token is more likely.

    Parameters
    ----------
    logprob_a, logprob_b : float
        Log-probabilities of the answer tokens ``A`` and ``B`` (Python or numpy real numbers; ``-inf`` is a
        probability of zero).

    Returns
    -------
    {'A', 'B'} or None
        None on a tie, or when either value is no log-probability: NaN, ``+inf``, a bool, a non-number, or an
        integer too large for a float.
    """
    a, b = _logprob(logprob_a), _logprob(logprob_b)
    if a is None or b is None or a == b:
        return None
    return "A" if a > b else "B"


def parse_ranking(text: str, *, max_chars: int = 2000) -> str | None:
    """The model ranked first in a judge's ranking (see the module docstring for the format).

    The answer is read with ``json.loads``, else ``ast.literal_eval``, which evaluates literals only: a call
    such as ``__import__('os').system(...)`` is a ``ValueError``, hence None.

    Parameters
    ----------
    text : str
        The judge's answer.
    max_chars : int, default=2000
        A longer answer is no verdict, before any parsing (never more than :data:`MAX_RANKING_CHARS`).

    Returns
    -------
    {'model_1', 'model_2'} or None
        None for anything but exactly two entries naming both models with ranks 1 and 2 (ints, not bools).
    """
    if not _readable(text, min(max_chars, MAX_RANKING_CHARS)):
        return None
    value = _load_literal(text, python=True)
    if not isinstance(value, list) or len(value) != 2:
        return None
    ranks: dict[str, int] = {}
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"model", "rank"}:
            return None
        model, rank = entry["model"], entry["rank"]
        if not isinstance(model, str) or model not in MODELS or type(rank) is not int or rank not in (1, 2):
            return None
        if model in ranks:
            return None
        ranks[model] = rank
    if sorted(ranks.values()) != [1, 2]:
        return None
    return min(ranks, key=ranks.get)


def safe_parse(parser: Callable[..., str | None], *args: Any, **kwargs: Any) -> str | None:
    """``parser(*args, **kwargs)``, or None when it raises: a parser's bug costs one verdict, never the batch.

    The parsers here return None for any input; this is the backstop the backends call them through, so that
    an answer nobody foresaw becomes that pair's parse failure (the caller keeps its raw text) and a logged
    warning, instead of an exception that fails a Ray Data batch and with it the whole labeling job.
    """
    try:
        return parser(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any bug, RecursionError and MemoryError included
        log.warning("%s raised on one answer; it is recorded as a parse failure",
                    getattr(parser, "__name__", repr(parser)), exc_info=True)
        return None


# ---------------------------------------------------------------------------------- the bounded-input guard

def _readable(text: object, max_chars: int) -> bool:
    """Whether ``text`` is worth parsing: a string, not blank, at most ``max_chars`` long."""
    return isinstance(text, str) and 0 < len(text) <= max_chars and not text.isspace()


def _load_literal(text: str, *, python: bool) -> object | None:
    """The JSON value of ``text`` (code fences removed), else its Python literal when ``python``, else None.

    None too when brackets nest deeper than :data:`MAX_NESTING` (json and ast recurse per bracket) or when the
    parser raises. ``null`` is None as well, which no caller needs to tell from a failure.
    """
    body = _without_fences(text)
    if _too_deep(body):
        return None
    loaders: tuple[Callable[[str], object], ...] = (json.loads, ast.literal_eval) if python else (json.loads,)
    for load in loaders:
        try:
            return load(body)
        except _LITERAL_ERRORS:
            continue
    return None


def _without_fences(text: str) -> str:
    """``text`` stripped of whitespace and of the markdown code fence around it (a language name allowed)."""
    body = text.strip()
    opening = _OPENING_FENCE.match(body)
    if opening:
        body = body[opening.end():]
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def _too_deep(body: str) -> bool:
    """Whether brackets (``[{(``) nest deeper than :data:`MAX_NESTING` in ``body`` outside its quoted strings.

    Strings are ``"..."`` or ``'...'`` with backslash escapes: exact for JSON, where the depth json.loads
    reaches before it fails is counted too. For Python an estimate that a comment holding a quote can fool;
    there the tokenizer's own limit (200 brackets, a SyntaxError) and the caught RecursionError hold.
    Stops at the first bracket too deep, so a bracket bomb costs little.
    """
    if sum(body.count(opener) for opener in "[{(") <= MAX_NESTING:  # the usual answer: no need to scan
        return False
    depth = 0
    quote, escaped = "", -1  # the open string's quote; the position a backslash escapes
    for match in _STRUCTURE.finditer(body):
        ch, at = match.group(), match.start()
        if quote:
            if at == escaped:
                continue
            if ch == "\\":
                escaped = at + 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif ch in "]})":
            depth = max(depth - 1, 0)  # a stray closer must not hide the depth of what follows
    return False


# ---------------------------------------------------------------------------------------- helpers, by parser

def _json_preference(text: str) -> str | None:
    """The ``preference`` value of an answer that is one JSON object, else None."""
    obj = _load_literal(text, python=False)
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


def _logprob(value: object) -> float | None:
    """``value`` as a float when it can be a log-probability (a real number, not NaN, not +inf), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):  # an int or Fraction beyond the float range
        return None
    return None if math.isnan(number) or number == math.inf else number
