"""Fuzzing every parser of model output: whatever a model answers, a parser returns a verdict or None, fast.

A parser that raises (RecursionError on a bracket bomb, MemoryError, a quadratic regex that never ends) fails a
whole Ray Data batch of judge answers, so each call here must return None or a valid verdict within
:data:`CALL_LIMIT_S`. The examples are derandomized, so that CI sees the same ones on every run.
"""
from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import from_dtype

from rlthf.judges.parse import (MAX_ANSWER_CHARS, MAX_RANKING_CHARS, parse_logprobs, parse_preference,
                                parse_ranking)

CALL_LIMIT_S = 1.0
PREFERENCES = {None, "A", "B"}
RANKINGS = {None, "model_1", "model_2"}
FIVE_MB = 5 * 1024 * 1024  # characters

FUZZ = settings(
    max_examples=100,
    deadline=None,  # each call is timed against CALL_LIMIT_S below; building a multi-MB example is not
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# Characters that break naive text handling: bidi controls, zero-width, BOM, combining marks, full-width and
# look-alike letters (Ａ, Cyrillic А, Greek Α), emoji and a regional indicator, odd line breaks and spaces, NUL,
# lone surrogates (what errors='surrogateescape' decodes to).
ODD_CHARS = ["\u200f", "\u200e", "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u0301", "\u0308", "\uff21",
             "\uff22", "\uff52", "\u0410", "\u0391", "\U0001F600", "\U0001F1E6", "\U0001F44D\u200d\U0001F525",
             "\u2028", "\u0085", "\u00a0", "\u3000", "\x00", "\ud800", "\udfff", "\udc80"]
# Pieces of the two answer formats, so that fuzzed answers come close to a valid one.
FORMAT_PIECES = ["preference", "Preference", "PREFERENCE", ":", "=", " ", "\n", "\t", '"', "'", "\u201c", "\u201d",
                 "Response", "Response A", "Response B", "response b", "A", "B", "{", "}", "[", "]", "(", ")",
                 "```", "```json\n", "**", "`", "_", ",", "\\", "\\u0041", "model", "model_1", "model_2", "rank",
                 "'model'", "'rank'", "1", "2", "True", "None", "NaN", "1e999", "-", "#", "__import__('os')",
                 "9" * 5000, "{'model': 'model_1', 'rank': 1}", '"preference": "Response A"']
# Prefixes that open a nesting: brackets, JSON and Python containers, strings, unary operators, escapes, fences.
OPENERS = ["[", "{", "(", '{"preference": ', '{"a": ', "[{'model': ", "{'a': ", '"', "'", '"\\', "-", "not ",
           "~", "\\", "```", "preference: [", "\u202e[", "[\u200b"]
CLOSERS = ["]", "}", ")", '"', "'", "", "]}", "```"]

fragments = st.one_of(st.sampled_from(ODD_CHARS + FORMAT_PIECES), st.text(max_size=8))
answers = st.lists(fragments, max_size=40).map("".join)
decoded_bytes = st.builds(lambda raw, errors: raw.decode("utf-8", errors), st.binary(max_size=4096),
                          st.sampled_from(["replace", "surrogateescape", "ignore", "backslashreplace"]))
# depths around each length bound (a ranking's, an answer's) and the brief's 10^5
depths = st.one_of(st.integers(0, 20), st.integers(0, MAX_RANKING_CHARS), st.integers(0, MAX_ANSWER_CHARS),
                   st.integers(0, 100_000), st.just(100_000))
nested = st.builds(lambda opener, depth, core, closer, closed: opener * depth + core + closer * (depth * closed // 4),
                   st.sampled_from(OPENERS), depths, answers, st.sampled_from(CLOSERS), st.integers(0, 4))
# Up to 5 MB: a unit repeated to a size (fast to build; a random 5 MB string would take hypothesis seconds).
large = st.builds(lambda unit, size, tail: (unit * (size // len(unit) + 1))[:size] + tail,
                  st.one_of(st.sampled_from(ODD_CHARS + FORMAT_PIECES + OPENERS), answers.filter(bool)),
                  st.integers(1, FIVE_MB), answers)
model_outputs = st.one_of(answers, decoded_bytes, nested, large)
not_text = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=64), st.lists(st.text(max_size=4)))


def timed(parser, *args, **kwargs):
    """``parser(*args, **kwargs)``, asserting that it returns within CALL_LIMIT_S."""
    start = time.perf_counter()
    result = parser(*args, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < CALL_LIMIT_S, f"{parser.__name__} took {elapsed:.2f} s on an answer of {len(args[0])} chars"
    return result


@FUZZ
@given(model_outputs)
def test_preference_parser_returns_a_verdict_or_none(text):
    assert timed(parse_preference, text) in PREFERENCES


@FUZZ
@given(model_outputs, st.sampled_from([64, 2000, MAX_RANKING_CHARS, 10**9]))
def test_ranking_parser_returns_a_verdict_or_none(text, max_chars):
    assert timed(parse_ranking, text, max_chars=max_chars) in RANKINGS


@FUZZ
@given(not_text)
def test_parsers_refuse_what_is_not_text(value):
    assert parse_preference(value) is None
    assert parse_ranking(value) is None


@FUZZ
@given(answers, st.sampled_from(["A", "B"]))
def test_noise_before_the_final_preference_line_never_changes_it(noise, letter):
    """The last ``preference:`` line counts, whatever hostile text precedes it (within the length bound)."""
    text = f"{noise}\npreference: Response {letter}"
    assert timed(parse_preference, text) == (letter if len(text) <= MAX_ANSWER_CHARS else None)


odd_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, -1.7976931348623157e308]),
    from_dtype(np.dtype("float32")), from_dtype(np.dtype("float16")), from_dtype(np.dtype("float64")),
    st.integers(-(10**400), 10**400), st.fractions(), st.just(Fraction(10**400, 3)),
    st.booleans(), st.none(), st.text(max_size=8), st.complex_numbers(max_magnitude=10),
)


@FUZZ
@given(odd_numbers, odd_numbers)
def test_logprob_parser_returns_a_verdict_or_none(logprob_a, logprob_b):
    start = time.perf_counter()
    verdict = parse_logprobs(logprob_a, logprob_b)
    assert time.perf_counter() - start < CALL_LIMIT_S
    assert verdict in PREFERENCES
    if all(_is_logprob(v) for v in (logprob_a, logprob_b)) and float(logprob_a) != float(logprob_b):
        assert verdict == ("A" if float(logprob_a) > float(logprob_b) else "B")
    else:
        assert verdict is None


def _is_logprob(value) -> bool:
    """The oracle: a real number (not a bool) that fits a float and is neither NaN nor +inf."""
    if isinstance(value, (bool, complex, str)) or value is None:
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return not math.isnan(number) and number != math.inf


def hostile_answers(n: int) -> dict[str, str]:
    """Answers of about ``n`` characters (n >= 1000) that attack the nesting guard, json, ast and the regexes."""
    return {
        "brackets": "[" * n,
        "brackets, closed": "[" * (n // 2) + "]" * (n // 2),
        "JSON objects": '{"a": ' * (n // 7) + "1" + "}" * (n // 7),
        "parentheses": "(" * n,
        "brackets behind a string of closers": '["' + "]" * 500 + '", ' + "[" * (n - 600),
        "brackets behind a comment's quote": "# it's\n" + "[" * (n - 10),
        "quotes": '"' * n,
        "escaped quotes": '"\\"' * (n // 3),
        "unary minus": "-" * n + "1",
        "not": "not " * (n // 4) + "1",
        "whitespace run": "Response " + " " * (n - 10) + "x",
        "whitespace run before a fence": "\t" * (n - 3) + "```",
        "preference keys": "preference: " * (n // 12),
        "huge integer rank": "[{'model': 'model_1', 'rank': " + "9" * (n - 100) + "}, {'model': 'model_2', 'rank': 2}]",
        "flat list": "[" + "1," * (n // 2 - 1) + "]",
        "flat JSON object": "{" + ",".join(f'"k{i}": [1]' for i in range(n // 13)) + "}",
    }


# Named hostile inputs, each sure to be tried whatever hypothesis draws: 10^5 deep and 5 MB (refused by length),
# odd unicode, and the attacks just within each parser's length bound, where the guard and json/ast must hold.
HOSTILE = {
    "brackets 1e5 deep": "[" * 100_000 + "]" * 100_000,
    "braces 1e5 deep": "{" * 100_000,
    "JSON objects 1e5 deep": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    "quotes 1e5 deep": '"' * 100_000,
    "5 MB of brackets": "[" * FIVE_MB,
    "5 MB of text then an answer": "x" * FIVE_MB + '\npreference: "Response A"',
    "lone surrogates": "\ud800preference: \udfffResponse A\udc80",
    "NUL bytes": "[{'model': 'model_1',\x00 'rank': 1}, {'model': 'model_2', 'rank': 2}]",
    "RTL override around the answer": "\u202epreference: Response A\u202c",
    "full-width answer": "preference: \uff32\uff45\uff53\uff50\uff4f\uff4e\uff53\uff45 \uff21",
    **{f"{name}, ranking size": text for name, text in hostile_answers(MAX_RANKING_CHARS - 8).items()},
    **{f"{name}, answer size": text for name, text in hostile_answers(MAX_ANSWER_CHARS - 8).items()},
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_answers_get_a_verdict_or_none_in_time(text):
    assert timed(parse_preference, text) in PREFERENCES
    for max_chars in (2000, MAX_RANKING_CHARS):
        assert timed(parse_ranking, text, max_chars=max_chars) in RANKINGS
