"""The judge's log-probability confidence: read from an OpenAI-compatible answer in either logprobs format,
carried to the selection, and ordering the human batch inside the curve's region (least confident first)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from rlthf.config import ConfigError, JudgeConfig, load_config
from rlthf.core.selectors import least_confident_first, suspicious_first
from rlthf.judges.openai_backend import TOP_LOGPROBS, OpenAIJudge, answer_logprobs, token_alternatives
from tests.conftest import REPO


def chat_logprobs(tokens):
    """A choice's ``logprobs`` in the chat format (OpenAI, vLLM): tokens with their top alternatives."""
    return SimpleNamespace(content=[
        SimpleNamespace(token=token, logprob=max(top.values(), default=0.0),
                        top_logprobs=[SimpleNamespace(token=t, logprob=lp) for t, lp in top.items()])
        for token, top in tokens])


def completion_logprobs(tokens):
    """The same in the completions format, as llama-cpp-python's server sends it for chat (pydantic keeps
    unknown fields in ``model_extra``)."""
    return SimpleNamespace(content=None, model_extra={"tokens": [t for t, _ in tokens],
                                                      "top_logprobs": [top for _, top in tokens]})


ANSWER = [("rationale: B is kinder.\n", {}), ("preference", {"preference": -0.01}), (':', {}), (' "', {}),
          ("Response", {"Response": -0.02}), (" B", {" B": -0.3, " A": -1.5, " C": -6.0}), ('"', {'"': 0.0})]


@pytest.mark.parametrize("shape", [chat_logprobs, completion_logprobs])
def test_the_answer_letters_log_probabilities_come_from_the_token_after_the_prefix(shape):
    tokens = token_alternatives(shape(ANSWER))
    assert [t for t, _ in tokens] == [t for t, _ in ANSWER]
    assert answer_logprobs(tokens) == (-1.5, -0.3)


class AnsweringCompletions:
    """The ``chat.completions`` of an OpenAI client that answers ANSWER, with log-probabilities when asked."""

    def __init__(self):
        self.asked = []

    def create(self, *, model, messages, temperature, max_tokens, **logprobs):
        self.asked.append(logprobs)
        choice = SimpleNamespace(message=SimpleNamespace(content="".join(t for t, _ in ANSWER)), finish_reason="stop",
                                 logprobs=chat_logprobs(ANSWER) if logprobs.get("logprobs") else None)
        return SimpleNamespace(choices=[choice], usage=SimpleNamespace(prompt_tokens=30, completion_tokens=7))


@pytest.mark.parametrize("mode", ["logprob", "generate"])
def test_the_openai_judge_keeps_the_letters_log_probabilities_in_logprob_mode(mode, monkeypatch):
    monkeypatch.setenv("RLTHF_SIGNAL_TEST_KEY", "sk-unused")
    judge = OpenAIJudge(JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9",
                                    api_key_env="RLTHF_SIGNAL_TEST_KEY", mode=mode))
    completions = AnsweringCompletions()
    judge.client = SimpleNamespace(chat=SimpleNamespace(completions=completions), api_key="sk-unused")
    verdicts = judge({"key": np.array(["p|ab"], dtype=object), "pair_id": np.array(["p"], dtype=object),
                      "order": np.array(["ab"], dtype=object), "system": np.array(["s"], dtype=object),
                      "user": np.array(["u"], dtype=object)})
    assert verdicts["preference"].tolist() == ["B"] and verdicts["error"].tolist() == [""]
    if mode == "logprob":
        assert completions.asked == [{"logprobs": True, "top_logprobs": TOP_LOGPROBS}]
        assert (verdicts["logprob_a"][0], verdicts["logprob_b"][0]) == (-1.5, -0.3)
    else:
        assert completions.asked == [{}] and np.isnan(verdicts["logprob_a"][0]) and np.isnan(verdicts["logprob_b"][0])


def test_a_letter_outside_the_alternatives_gets_the_smallest_listed_and_no_answer_gets_nan():
    confident = [('preference: "Response', {}), ("A", {"A": -0.001, "The": -7.0, "a": -9.0})]
    assert answer_logprobs(confident) == (-0.001, -9.0)  # a lower bound on the margin, never more
    merged = [('preference: "Response', {}), ('A"', {'A"': -0.2, 'B"': -1.9})]  # the quote merged in
    assert answer_logprobs(merged) == (-0.2, -1.9)
    for tokens in ([("I cannot decide.", {"I": -0.1})],  # no answer format
                   [('preference: "Response', {}), (" C", {" C": -0.1, " D": -2.0})],  # no letter listed
                   []):
        assert all(math.isnan(v) for v in answer_logprobs(tokens))
    assert token_alternatives(None) == [] and token_alternatives(SimpleNamespace(content=None)) == []


def test_least_confident_first_reorders_only_the_window_by_the_margins_magnitude():
    priority = np.array([4, 0, 3, 1, 2])
    margin = np.array([0.1, 5.0, -2.0, np.nan, -0.5])  # by position
    # the window holds positions 4, 0, 3: no margin (3) first, then |0.1| (0), |-0.5| (4); 1 and 2 stay behind
    assert least_confident_first(priority, margin, 3).tolist() == [3, 0, 4, 1, 2]
    assert least_confident_first(priority, margin, 0).tolist() == priority.tolist()
    assert least_confident_first(priority, np.full(5, 1.0), 5).tolist() == priority.tolist()  # ties keep the curve's
    with pytest.raises(ValueError, match="judge_margin has shape"):
        least_confident_first(priority, margin[:4], 2)
    # suspicious_first is the same reordering with a yes/no doubt
    assert suspicious_first(priority, np.isnan(margin), 3).tolist() == [3, 4, 0, 1, 2]


def test_least_confident_first_needs_a_judge_that_scores_log_probabilities():
    with pytest.raises(ConfigError, match="selection.judge_signal"):
        # the vicuna80 preset takes GPT-4's labels from a column: no log-probabilities
        load_config(REPO / "configs/vicuna80.yaml", ["selection.judge_signal=least_confident_first"])
    with pytest.raises(ConfigError, match="judge.mode generate"):
        load_config(REPO / "configs/demo_judge.yaml",
                    ["selection.judge_signal=least_confident_first", "judge.mode=generate"])
    config = load_config(REPO / "configs/demo_judge.yaml", ["selection.judge_signal=least_confident_first"])
    assert config.selection.judge_signal == "least_confident_first"
    # AI labels from a column with the judge's margins beside them
    config = load_config(REPO / "configs/vicuna80.yaml", ["selection.judge_signal=least_confident_first",
                                                          "ai_labels.margin_column=judge_margin"])
    assert config.ai_labels.margin_column == "judge_margin"
