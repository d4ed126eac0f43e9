"""The transformers judge backend with the real SmolLM2-135M-Instruct GGUF on CPU, on real HH-RLHF pairs.

SmolLM2-135M is tiny: these tests check the mechanics (loading offline, log-probabilities, batching, parsing,
Ray Data), never that it judges well. One thread per judge: with more threads than idle cores, OpenMP
oversubscription makes a forward pass several times slower.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from rlthf.config import JudgeConfig
from rlthf.data import read_pairs
from rlthf.judges.base import VERDICT_COLUMNS
from rlthf.judges.prompts import render_requests
from rlthf.judges.transformers_backend import UNPARSEABLE, TransformersJudge

CONFIG = JudgeConfig(backend="transformers", mode="logprob", both_orders=True, cpus_per_actor=1, batch_size=4)


@pytest.fixture(scope="module")
def requests(hh_rlhf_path) -> dict[str, np.ndarray]:
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=3)
    return render_requests(pairs, CONFIG)  # 3 pairs in both orders: 6 requests


@pytest.fixture(scope="module")
def judge() -> TransformersJudge:
    return TransformersJudge(CONFIG)


@pytest.fixture(scope="module")
def verdicts(judge, requests) -> dict[str, np.ndarray]:
    return judge(requests)


def rows(requests: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    return {column: values[index] for column, values in requests.items()}


def test_loads_the_gguf_offline_and_finds_the_answer_tokens(judge):
    assert judge.model.training is False
    assert judge.max_context == 8192
    # BPE merges the prefix's trailing space into the letter: " A" / " B" follow '... "Response'
    assert [judge.tokenizer.decode([t]) for t in judge.answer_token_ids] == [" A", " B"]
    assert judge.tokenizer.decode(judge.prefix_ids) == 'preference: "Response'


def test_logprob_mode_gives_a_preference_for_every_request(verdicts, requests):
    assert set(verdicts) == set(VERDICT_COLUMNS)
    assert list(verdicts["key"]) == list(requests["key"])
    assert set(verdicts["preference"]) <= {"A", "B"}
    assert list(verdicts["error"]) == [""] * len(requests["key"])
    assert not verdicts["retryable"].any()
    for lp_a, lp_b, preference in zip(verdicts["logprob_a"], verdicts["logprob_b"], verdicts["preference"]):
        assert math.isfinite(lp_a) and math.isfinite(lp_b)
        assert lp_a <= 0 and lp_b <= 0 and math.exp(lp_a) + math.exp(lp_b) <= 1 + 1e-6
        assert preference == ("A" if lp_a > lp_b else "B")
    assert (verdicts["raw"] == "logprob").all()
    assert (verdicts["prompt_tokens"] > 100).all() and (verdicts["completion_tokens"] == 0).all()


def test_logprob_mode_is_deterministic_and_padding_does_not_change_it(judge, requests, verdicts):
    again = judge(requests)
    np.testing.assert_array_equal(again["logprob_a"], verdicts["logprob_a"])
    np.testing.assert_array_equal(again["logprob_b"], verdicts["logprob_b"])
    # the 6 prompts have different lengths, so in the batch most rows are padded; alone, none is
    assert len(set(verdicts["prompt_tokens"])) > 1
    for i in range(len(requests["key"])):
        alone = judge(rows(requests, [i]))
        assert alone["preference"][0] == verdicts["preference"][i]
        assert alone["logprob_a"][0] == pytest.approx(verdicts["logprob_a"][i], abs=1e-3)
        assert alone["logprob_b"][0] == pytest.approx(verdicts["logprob_b"][i], abs=1e-3)


def test_an_overlong_prompt_is_cut_from_the_left_or_fails_alone(judge, requests):
    small = copy.copy(judge)  # shares the loaded model
    small.max_context, small.truncated = 300, 0
    cut = small(rows(requests, [0, 1]))
    assert set(cut["preference"]) <= {"A", "B"} and list(cut["error"]) == ["", ""]
    assert (cut["prompt_tokens"] <= 300).all() and small.truncated == 2
    small.max_context = 40  # not even the system prompt fits: that row's error, not an exception
    failed = small(rows(requests, [0]))
    assert failed["preference"][0] == "" and failed["error"][0].startswith("prompt too long")


def test_generate_mode_returns_text_and_a_parsed_or_reported_answer(judge, requests):
    generating = copy.copy(judge)  # shares the loaded model; the mode is read from the config per batch
    generating.config = dataclasses.replace(CONFIG, mode="generate", max_new_tokens=16)
    out = generating(rows(requests, [0, 1]))
    assert set(out) == set(VERDICT_COLUMNS)
    for raw, preference, error in zip(out["raw"], out["preference"], out["error"]):
        assert isinstance(raw, str) and raw.strip()
        assert (preference in ("A", "B") and error == "") or (preference == "" and error == UNPARSEABLE)
    assert not out["retryable"].any()
    assert (out["prompt_tokens"] > 100).all()
    assert ((out["completion_tokens"] > 0) & (out["completion_tokens"] <= 16)).all()
    assert np.isnan(out["logprob_a"]).all() and np.isnan(out["logprob_b"]).all()


def test_through_ray_data(ray_local, requests):
    import ray

    frame = pd.DataFrame(rows(requests, slice(0, 4)))
    out = (ray_local.data.from_pandas(frame)
           .map_batches(TransformersJudge, fn_constructor_kwargs={"config": CONFIG},
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=4, batch_format="numpy")
           .to_pandas())
    assert set(out.columns) == set(VERDICT_COLUMNS)
    assert sorted(out["key"]) == sorted(frame["key"])
    assert set(out["preference"]) <= {"A", "B"} and (out["error"] == "").all()
    assert np.isfinite(out["logprob_a"].astype(float)).all()
