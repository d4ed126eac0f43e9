"""The ``openai`` judge backend against real servers on loopback: llama.cpp's OpenAI-compatible server with
SmolLM2-135M, behind a proxy that injects rate limits, 5xx, a stall past the timeout and bad answers.

SmolLM2-135M is tiny: its answers are rarely in the answer format, so nothing here asserts their quality.
"""
from __future__ import annotations

import json
import logging
import re
import secrets

import numpy as np
import pandas as pd
import pytest

from rlthf.config import ConfigError, JudgeConfig
from rlthf.data import read_pairs
from rlthf.judges.base import VERDICT_COLUMNS, cost
from rlthf.judges.openai_backend import TOP_LOGPROBS, OpenAIJudge, token_alternatives
from rlthf.judges.prompts import render_requests
from tests.judge_servers import (ANSWER_B, BAD_REQUEST, DELAY, ERROR_500, ERROR_503, GARBAGE, MODEL_ALIAS, OK,
                                 RATE_LIMIT, RATE_LIMIT_1S, TRUNCATED, FaultProxy, run_llama_server)

pytestmark = pytest.mark.slow

KEY_ENV = "RLTHF_TEST_JUDGE_API_KEY"
TIMEOUT_S = 30.0  # the client's; a real answer waits behind up to 3 others on the one-thread server
# (15 s timed out on a busy 2-core machine and turned one answer into a retry)
MAX_RETRIES = 3
ANSWERED = ("", "unparseable answer", "truncated answer")  # errors of a request that got an answer

# What the proxy does to the request of pair i, attempt by attempt (then it forwards); pairs 10 and 11 pass.
SCHEDULE = {
    0: [RATE_LIMIT],              # 429 Retry-After: 0, then the real answer
    1: [RATE_LIMIT_1S],           # 429 Retry-After: 1, then the real answer
    2: [ERROR_500],               # 500, then the real answer
    3: [ERROR_500, ERROR_503],    # two 5xx, then the real answer
    4: [DELAY],                   # nothing until past the client's timeout, then the real answer
    5: [GARBAGE],                 # 200, no preference in the text, no usage block
    6: [TRUNCATED],               # 200, cut off mid-rationale, finish_reason "length"
    7: ERROR_503,                 # 503 on every attempt: the client's retries run out
    8: [ANSWER_B],                # 200, a well-formed answer
    9: [BAD_REQUEST],             # 400: not retried
}


def judge_config(base_url: str, **overrides) -> JudgeConfig:
    settings = dict(backend="openai", model=MODEL_ALIAS, base_url=base_url, api_key_env=KEY_ENV,
                    max_retries=MAX_RETRIES, timeout_s=TIMEOUT_S, concurrency=4, max_new_tokens=24, temperature=0.0,
                    both_orders=False, max_prompt_chars=500, prompt_price_per_1m=0.15, completion_price_per_1m=0.6,
                    mode="generate")  # the shared server has no logprobs (logits_all off: faster)
    settings.update(overrides)
    return JudgeConfig(**settings)


@pytest.fixture(scope="module")
def hh_requests(hh_rlhf_path) -> dict[str, np.ndarray]:
    """12 real HH-RLHF pairs, one request each (order "ab")."""
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=12)
    rendered = render_requests(pairs, judge_config("http://unused"))
    assert len(rendered["key"]) == 12 and len(set(rendered["user"])) == 12
    return rendered


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    return key


def take(requests: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    return {column: values[rows] for column, values in requests.items()}


def test_every_request_ends_with_one_verdict_through_the_faults(llama_server, hh_requests, api_key):
    users = hh_requests["user"]
    schedule = {users[i]: faults for i, faults in SCHEDULE.items()}
    with FaultProxy(llama_server, schedule, delay_s=TIMEOUT_S + 1.5) as proxy:
        verdicts = OpenAIJudge(judge_config(proxy.base_url))(hh_requests)
    table = pd.DataFrame(verdicts)

    # no loss, no duplicate, request order, the verdict columns
    assert list(verdicts) == list(VERDICT_COLUMNS)
    assert table["key"].tolist() == hh_requests["key"].tolist()
    attempts = {i: [r for r in proxy.records if r["user"] == users[i]] for i in range(12)}
    for i, seen in attempts.items():  # the proxy's log: one request, then the client's own retries
        assert [r["attempt"] for r in seen] == list(range(len(seen)))
        assert [r["retry_count"] for r in seen] == [str(n) for n in range(len(seen))]

    # 429, 5xx and the stall past the timeout: retried by the client, then answered by the real model
    for i in (0, 1, 2, 3, 4, 10, 11):
        row = table.iloc[i]
        assert row["error"] in ANSWERED and not row["retryable"], row.to_dict()
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["preference"] in ("A", "B", "")
        assert (row["preference"] == "") == (row["error"] != "")
        assert attempts[i][-1]["fault"] == OK and attempts[i][-1]["status"] == 200
    assert [len(attempts[i]) for i in (0, 1, 2, 3, 4, 10, 11)] == [2, 2, 2, 3, 2, 1, 1]
    # Retry-After honoured: 1 s asked, waited at least that (its own first backoff is 0.375-0.5 s)
    assert attempts[1][1]["t"] - attempts[1][0]["t"] >= 1.0
    # the stalled request was given up on at the timeout, not answered late (the late answer says "B")
    assert attempts[4][1]["t"] - attempts[4][0]["t"] >= TIMEOUT_S

    # 503 on every attempt: retries spent, a retryable error naming the status
    assert len(attempts[7]) == MAX_RETRIES + 1
    assert table.iloc[7]["error"] == "InternalServerError: 503" and table.iloc[7]["retryable"]
    assert table.iloc[7]["preference"] == "" and table.iloc[7]["prompt_tokens"] == 0
    # 400: not retried, not retryable
    assert len(attempts[9]) == 1
    assert table.iloc[9]["error"] == "BadRequestError: 400" and not table.iloc[9]["retryable"]

    # answers that cannot be read: kept in raw, not retryable; tokens from usage, 0 without it
    garbage, truncated, answer = table.iloc[5], table.iloc[6], table.iloc[8]
    assert (garbage["preference"], garbage["error"], garbage["retryable"]) == ("", "unparseable answer", False)
    assert garbage["raw"].startswith("lorem ipsum") and garbage["prompt_tokens"] == 0
    assert (truncated["preference"], truncated["error"], truncated["retryable"]) == ("", "truncated answer", False)
    assert truncated["raw"].startswith("rationale:") and truncated["completion_tokens"] == 12
    assert (answer["preference"], answer["error"], answer["prompt_tokens"]) == ("B", "", 100)
    assert len(attempts[5]) == len(attempts[6]) == len(attempts[8]) == 1
    print("\nretry gaps (s):", {i: [round(b["t"] - a["t"], 2) for a, b in zip(attempts[i], attempts[i][1:])]
                                 for i in (0, 1, 2, 3, 4, 7)})


def test_the_api_key_is_never_logged_returned_or_written(llama_server, hh_requests, api_key, caplog, capfd, tmp_path):
    caplog.set_level(logging.DEBUG)  # the openai client's and httpx's debug logs too
    rows = [7, 0, 9, 5]  # spent retries, a rate limit, a 400 and garbage: every error path
    users = hh_requests["user"]
    schedule = {users[7]: ERROR_503, users[0]: [RATE_LIMIT], users[9]: [BAD_REQUEST], users[5]: [GARBAGE]}
    with FaultProxy(llama_server, schedule) as proxy:
        verdicts = OpenAIJudge(judge_config(proxy.base_url, max_retries=1))(take(hh_requests, rows))
        # what a run keeps: the verdicts, the proxy's records
        pd.DataFrame(verdicts).to_parquet(tmp_path / "verdicts.parquet")
        pd.DataFrame(verdicts).to_json(tmp_path / "verdicts.jsonl", orient="records", lines=True)
        (tmp_path / "proxy.json").write_text(json.dumps(proxy.records))
    errors = verdicts["error"].tolist()
    assert errors[0] == "InternalServerError: 503" and errors[1] in ANSWERED
    assert errors[2:] == ["BadRequestError: 400", "unparseable answer"]
    assert any("Retrying request" in r.getMessage() for r in caplog.records)  # the logs were captured
    for column, values in verdicts.items():
        assert not any(api_key in str(v) for v in values), column
    assert not any(api_key in r.getMessage() or api_key in str(r.args) for r in caplog.records)
    assert api_key not in caplog.text
    out, err = capfd.readouterr()
    assert api_key not in out and api_key not in err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 3 and not any(api_key.encode() in p.read_bytes() for p in files)


def test_the_real_server_answers_with_token_counts(llama_server, hh_requests, api_key):
    verdicts = OpenAIJudge(judge_config(llama_server))(take(hh_requests, [10, 11]))
    assert verdicts["key"].tolist() == hh_requests["key"][[10, 11]].tolist()
    assert (verdicts["prompt_tokens"] > 0).all() and (verdicts["completion_tokens"] > 0).all()
    for preference, error, raw in zip(verdicts["preference"], verdicts["error"], verdicts["raw"]):
        assert raw and ((preference in ("A", "B") and error == "") or
                        (preference == "" and error in ("unparseable answer", "truncated answer")))
    assert not verdicts["retryable"].any()
    config = judge_config(llama_server)
    spent = cost(verdicts["prompt_tokens"], verdicts["completion_tokens"], config)
    assert spent == pytest.approx((verdicts["prompt_tokens"].sum() * 0.15 + verdicts["completion_tokens"].sum() * 0.6)
                                  / 1e6)


@pytest.fixture(scope="module")
def llama_logprob_server(tmp_path_factory):
    """A second llama.cpp server, this one returning log-probabilities (logits_all)."""
    with run_llama_server(tmp_path_factory.mktemp("llama-logprobs") / "server.log", logits_all=True) as base_url:
        yield base_url


def test_logprob_mode_reads_the_answer_letters_from_a_real_servers_logprobs(llama_logprob_server, hh_requests,
                                                                            api_key):
    config = judge_config(llama_logprob_server, mode="logprob")
    judge = OpenAIJudge(config)
    verdicts = judge(take(hh_requests, [10, 11]))
    assert verdicts["error"].tolist() and all(e in ANSWERED for e in verdicts["error"])  # logprobs were accepted
    assert not verdicts["retryable"].any()
    for raw, preference, logprob_a, logprob_b in zip(verdicts["raw"], verdicts["preference"], verdicts["logprob_a"],
                                                     verdicts["logprob_b"]):
        named = re.search(r'preference:\s*"Response\s?[AB]', raw)  # greedy: the letter is its own top alternative
        assert np.isfinite(logprob_a) == np.isfinite(logprob_b) == bool(named)
        if named:
            assert {"A": logprob_a > logprob_b, "B": logprob_b > logprob_a}[preference]
    # what the backend reads from this server: every generated token with its alternatives, the text whole
    response = judge.client.chat.completions.create(
        model=config.model, messages=[{"role": "system", "content": str(hh_requests["system"][10])},
                                      {"role": "user", "content": str(hh_requests["user"][10])}],
        temperature=0.0, max_tokens=config.max_new_tokens, logprobs=True, top_logprobs=TOP_LOGPROBS)
    tokens = token_alternatives(response.choices[0].logprobs)
    assert tokens and "".join(token for token, _ in tokens) == response.choices[0].message.content
    assert all(0 < len(alternatives) <= TOP_LOGPROBS and max(alternatives.values()) <= 0
               and token in alternatives for token, alternatives in tokens)  # greedy: each token is listed


def test_a_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        OpenAIJudge(judge_config("http://127.0.0.1:9/v1"))
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(ConfigError, match=f"{KEY_ENV} is not set or empty"):
        OpenAIJudge(judge_config("http://127.0.0.1:9/v1"))


def test_cost_uses_the_per_million_prices():
    config = judge_config("http://unused", prompt_price_per_1m=2.5, completion_price_per_1m=10.0)
    assert cost(1_000_000, 0, config) == pytest.approx(2.5)
    assert cost(np.array([200_000, 300_000]), np.array([50_000, 50_000]), config) == pytest.approx(1.25 + 1.0)


def test_on_ray_data_one_verdict_per_request(ray_local, llama_server, hh_requests, api_key):
    ray = ray_local
    rows = [10, 11, 0, 8]
    schedule = {hh_requests["user"][0]: [RATE_LIMIT], hh_requests["user"][8]: [ANSWER_B]}
    with FaultProxy(llama_server, schedule) as proxy:
        dataset = ray.data.from_pandas(pd.DataFrame(take(hh_requests, rows)))
        verdicts = dataset.map_batches(
            OpenAIJudge,
            fn_constructor_kwargs={"config": judge_config(proxy.base_url)},
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=2,
            batch_format="numpy",
            # the actor's process was started with Ray, before the test set the variable
            runtime_env={"env_vars": {KEY_ENV: api_key}},
        ).to_pandas()
    assert sorted(verdicts["key"]) == sorted(hh_requests["key"][rows])
    assert verdicts["error"].isin(ANSWERED).all() and not verdicts["retryable"].any()
    assert verdicts.set_index("key").loc[hh_requests["key"][8], "preference"] == "B"
    assert len([r for r in proxy.records if r["user"] == hh_requests["user"][0]]) == 2
