"""The parsers' bounds, the ranking parser in its new home, and every backend surviving a parser that raises.

The backend tests run the real batch code of each backend with the model or the endpoint replaced by scripted
answers: one answer in the batch is a bracket bomb (``json.loads`` raises RecursionError on it), and the
parser is either the real one or a naive one that lets that RecursionError out.
"""
from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest

import rlthf.judges.openai_backend as openai_backend
import rlthf.judges.parse as parse
import rlthf.judges.transformers_backend as transformers_backend
from rlthf.config import JudgeConfig
from rlthf.judges.base import VERDICT_COLUMNS
from rlthf.judges.parse import (MAX_ANSWER_CHARS, MAX_NESTING, MAX_RANKING_CHARS, parse_preference, parse_ranking,
                                safe_parse)
from rlthf.judges.transformers_backend import TransformersJudge
from rlthf.judges.vllm_backend import _verdict_row

RANK_1_FIRST = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
BOMB = "[" * 30_000  # within MAX_ANSWER_CHARS: json.loads recurses into it and raises RecursionError
# The judge's answers in one batch: two readable, a bracket bomb, a 5 MB answer, an empty one.
ANSWERS = ['preference: "Response A"', BOMB, '{"preference": "Response B"}', "x" * 5_000_000, ""]
EXPECTED = ["A", "", "B", "", ""]


# ------------------------------------------------------------------------------------------ the bounded input

def nested_json(depth: int) -> str:
    """A preference object with a list nested so that the deepest bracket is at ``depth``."""
    return '{"preference": "Response A", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_json_answers_nest_at_most_max_nesting():
    assert parse_preference(nested_json(MAX_NESTING)) == "A"
    # one deeper is no JSON answer; the key line `"Response A", "x": [[...` then reads as no clear answer
    assert parse_preference(nested_json(MAX_NESTING + 1)) is None


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '{"preference": "Response B", "rationale": "' + "(" * 50 + "]" * 50 + '"}'
    assert parse_preference(text) == "B"


def test_a_stray_closer_does_not_hide_the_nesting_behind_it():
    assert parse._too_deep("]" * 20 + "[" * (MAX_NESTING + 1))
    assert not parse._too_deep("]" * 20 + "[" * MAX_NESTING)


def test_preference_answers_are_bounded_in_length():
    answer = 'preference: "Response A"'
    padded = " " * (MAX_ANSWER_CHARS - len(answer)) + answer
    assert parse_preference(padded) == "A"
    assert parse_preference(" " + padded) is None


def test_code_fences_around_a_long_whitespace_run_are_read_in_linear_time():
    answer = '{"preference": "Response B"}\n```'
    assert parse_preference("```json\n" + " " * (MAX_ANSWER_CHARS - 50) + answer) == "B"


# ----------------------------------------------------------------------------------- the ranking parser

@pytest.mark.parametrize("answer, first", [
    (RANK_1_FIRST, "model_1"),
    ("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", "model_2"),
    ('[{"model": "model_2", "rank": 1}, {"model": "model_1", "rank": 2}]', "model_2"),
    ("```python\n" + RANK_1_FIRST + "\n```", "model_1"),
])
def test_reads_a_ranking(answer, first):
    assert parse_ranking(answer) == first


@pytest.mark.parametrize("answer", [
    "[{'model': __import__('os').system('true'), 'rank': 1}, {'model': 'model_2', 'rank': 2}]",
    "[" * 50 + "]" * 50,
    "[{'model': 'model_1', 'rank': 1}, {'model': 'model_1', 'rank': 2}]",
    "[{'model': 'model_1', 'rank': True}, {'model': 'model_2', 'rank': 2}]",
    "[{'model': ['model_1'], 'rank': 1}, {'model': 'model_2', 'rank': 2}]",
    "# it's\n" + "[" * 300 + "]" * 300,  # the quote hides the nesting from the guard; Python's tokenizer refuses it
    "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': " + "-" * 1900 + "2}]",
])
def test_anything_else_is_no_ranking(answer):
    assert parse_ranking(answer) is None


def test_max_chars_bounds_the_ranking_and_is_capped():
    assert parse_ranking(RANK_1_FIRST, max_chars=len(RANK_1_FIRST)) == "model_1"
    assert parse_ranking(RANK_1_FIRST, max_chars=len(RANK_1_FIRST) - 1) is None
    padded = RANK_1_FIRST + " " * (MAX_RANKING_CHARS - len(RANK_1_FIRST))
    assert parse_ranking(padded, max_chars=10**9) == "model_1"
    assert parse_ranking(padded + " ", max_chars=10**9) is None


# ----------------------------------------------------------------------------------------------- safe_parse

def test_safe_parse_turns_a_parser_bug_into_no_verdict(caplog):
    def broken(text):
        raise RecursionError("maximum recursion depth exceeded")

    assert safe_parse(parse_ranking, RANK_1_FIRST, max_chars=100) == "model_1"
    with caplog.at_level(logging.WARNING, logger="rlthf.judges.parse"):
        assert safe_parse(broken, BOMB) is None
    assert "broken raised" in caplog.text and "RecursionError" in caplog.text


# --------------------------------------------------------------------------- backends: one bad answer, one row

def naive_parse_preference(text: str):
    """The preference parser before issue 15: ``json.loads`` guarded only against JSONDecodeError."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        pass
    return parse_preference(text)


@pytest.fixture(params=["hardened parser", "naive parser"])
def parser_kind(request, monkeypatch) -> str:
    """Run the test with the real parser, and again with the naive one in every module that calls it."""
    if request.param == "naive parser":
        for module in (openai_backend, transformers_backend, parse):
            monkeypatch.setattr(module, "parse_preference", naive_parse_preference)
        with pytest.raises(RecursionError):
            naive_parse_preference(BOMB)
    return request.param


def requests(n: int) -> dict[str, np.ndarray]:
    """``n`` judge requests; request i's user prompt is ``str(i)``, so a scripted judge answers ANSWERS[i]."""
    return {"key": np.array([f"p{i}|ab" for i in range(n)], dtype=object),
            "pair_id": np.array([f"p{i}" for i in range(n)], dtype=object),
            "order": np.array(["ab"] * n, dtype=object),
            "system": np.array(["judge"] * n, dtype=object),
            "user": np.array([str(i) for i in range(n)], dtype=object)}


def assert_one_row_per_answer(verdicts: dict) -> None:
    assert set(VERDICT_COLUMNS) <= set(verdicts)
    assert list(verdicts["preference"]) == EXPECTED
    assert list(verdicts["raw"]) == ANSWERS  # every raw answer is kept, the unreadable ones too
    assert [bool(error) for error in verdicts["error"]] == [not p for p in EXPECTED]
    assert not any(verdicts["retryable"])


class FakeCompletions:
    """The ``chat.completions`` of an OpenAI client whose answer to user prompt ``str(i)`` is ANSWERS[i]."""

    def create(self, *, model, messages, temperature, max_tokens, **logprobs):
        content = ANSWERS[int(messages[1]["content"])]
        message = SimpleNamespace(content=content)
        usage = SimpleNamespace(prompt_tokens=12, completion_tokens=len(content) // 4)
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")], usage=usage)


def test_openai_batch_survives_an_answer_that_crashes_a_parser(parser_kind, monkeypatch):
    monkeypatch.setenv("RLTHF_PARSE_TEST_KEY", "sk-unused")
    judge = openai_backend.OpenAIJudge(JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9",
                                                   api_key_env="RLTHF_PARSE_TEST_KEY", concurrency=2))
    judge.client = SimpleNamespace(chat=SimpleNamespace(completions=FakeCompletions()), api_key="sk-unused")
    verdicts = judge(requests(len(ANSWERS)))
    assert_one_row_per_answer(verdicts)
    assert set(verdicts["error"]) == {"", openai_backend.UNPARSEABLE}


def test_vllm_rows_survive_an_answer_that_crashes_a_parser(parser_kind):
    batch = requests(len(ANSWERS))
    rows = [_verdict_row({"key": batch["key"][i], "pair_id": batch["pair_id"][i], "order": "ab",
                          "generated_text": answer}) for i, answer in enumerate(ANSWERS)]
    verdicts = {column: [row[column] for row in rows] for column in VERDICT_COLUMNS}
    assert_one_row_per_answer(verdicts)


class ScriptedTransformersJudge(TransformersJudge):
    """TransformersJudge's batch code with the model replaced: request i answers ANSWERS[i], scores SCORES[i]."""

    SCORES = [(-0.1, -2.0), (math.nan, -1.0), (-3.0, -0.5), (math.inf, -1.0), (-math.inf, -math.inf)]

    def __init__(self, config: JudgeConfig):  # no model to load
        self.config, self.prefix_ids, self.truncated = config, [0], 0

    def _prompts(self, batch, reserve):
        n = len(batch["key"])
        return [[i] for i in range(n)], [""] * n

    def generate(self, prompts, *, seed=0):
        return [(ANSWERS[ids[0]], 1) for ids in prompts]

    def score_answers(self, sequences):
        return np.array([self.SCORES[ids[0]] for ids in sequences])


def test_transformers_generate_batch_survives_an_answer_that_crashes_a_parser(parser_kind):
    judge = ScriptedTransformersJudge(JudgeConfig(backend="transformers", mode="generate"))
    verdicts = judge(requests(len(ANSWERS)))
    assert_one_row_per_answer(verdicts)


def test_transformers_logprob_batch_survives_a_parser_bug(monkeypatch):
    def buggy_parse_logprobs(logprob_a, logprob_b):
        if math.isinf(logprob_a):
            raise OverflowError("a parser bug")
        return parse.parse_logprobs(logprob_a, logprob_b)

    judge = ScriptedTransformersJudge(JudgeConfig(backend="transformers", mode="logprob"))
    expected = ["A", "", "B", "", ""]  # NaN, +inf (the bug) and a tie of -inf are no preference
    assert list(judge(requests(5))["preference"]) == expected
    monkeypatch.setattr(transformers_backend, "parse_logprobs", buggy_parse_logprobs)
    verdicts = judge(requests(5))
    assert list(verdicts["preference"]) == expected
    assert all(verdicts["error"][i] for i in (1, 3, 4)) and not any(verdicts["error"][i] for i in (0, 2))
