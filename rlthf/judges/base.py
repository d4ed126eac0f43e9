"""What every judge backend shares: the request and verdict columns of a Ray Data batch.

A *request* asks the judge about one pair in one order. Order ``"ab"`` shows ``response_a`` as Response A and
``response_b`` as Response B; order ``"ba"`` swaps them, so that position bias can be measured. A backend is a
Ray Data callable class: ``__init__(config: JudgeConfig)`` loads the model or the client once per actor, and
``__call__(batch)`` maps a batch of requests to a batch of verdicts, one per request, in the same order, never
raising for one bad request (the failure goes into ``error``). Answers are read through
:func:`rlthf.judges.parse.safe_parse`, so that not even a parser bug fails the batch: it is that pair's parse
failure, its raw answer kept.

Request columns (numpy arrays of equal length)::

    key        str   "<pair_id>|<order>", unique in a batch
    pair_id    str
    order      str   "ab" | "ba"
    system     str   the system prompt
    user       str   the user prompt (task, criteria, few-shot examples, the sample)

Verdict columns::

    key, pair_id, order   as in the request
    preference str   "A" | "B" | "" (no parseable preference: see error and raw)
    raw        str   the judge's raw answer (generated text, or "logprob" for log-prob scoring)
    logprob_a  float log-probability of the answer "A" (NaN when the backend does not score)
    logprob_b  float
    prompt_tokens, completion_tokens   int
    error      str   "" when the request got an answer; else why not (parse failure, HTTP error, ...)
    retryable  bool  True for a transient failure (rate limit, 5xx, timeout) that a rerun should ask again;
                     False for an answer, or for a parse failure (asking again at temperature 0 repeats it)
"""
from __future__ import annotations

import numpy as np

REQUEST_COLUMNS = ("key", "pair_id", "order", "system", "user")
VERDICT_COLUMNS = ("key", "pair_id", "order", "preference", "raw", "logprob_a", "logprob_b", "prompt_tokens",
                   "completion_tokens", "error", "retryable")
ORDERS = ("ab", "ba")


def request_key(pair_id: str, order: str) -> str:
    return f"{pair_id}|{order}"


def verdict_batch(requests: dict[str, np.ndarray], *, preference, raw, logprob_a=None, logprob_b=None,
                  prompt_tokens=None, completion_tokens=None, error=None, retryable=None) -> dict[str, np.ndarray]:
    """A verdict batch for ``requests``, filling what a backend does not produce with its neutral value."""
    n = len(requests["key"])

    def column(values, fill, dtype):
        return np.full(n, fill, dtype=dtype) if values is None else np.asarray(values, dtype=dtype)

    return {
        "key": np.asarray(requests["key"], dtype=object),
        "pair_id": np.asarray(requests["pair_id"], dtype=object),
        "order": np.asarray(requests["order"], dtype=object),
        "preference": column(preference, "", object),
        "raw": column(raw, "", object),
        "logprob_a": column(logprob_a, np.nan, np.float64),
        "logprob_b": column(logprob_b, np.nan, np.float64),
        "prompt_tokens": column(prompt_tokens, 0, np.int64),
        "completion_tokens": column(completion_tokens, 0, np.int64),
        "error": column(error, "", object),
        "retryable": column(retryable, False, bool),
    }


def cost(prompt_tokens, completion_tokens, config) -> float:
    """The price of the tokens at a ``JudgeConfig``'s per-million prices; counts may be numbers or columns."""
    return float(np.sum(prompt_tokens) * config.prompt_price_per_1m
                 + np.sum(completion_tokens) * config.completion_price_per_1m) / 1e6
