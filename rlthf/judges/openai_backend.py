"""The ``openai`` judge backend: any OpenAI-compatible chat endpoint (OpenAI, Azure, a vLLM or llama.cpp server).

Written against the openai 3.x client. Retrying is the client's job, not ours: it retries connection errors,
timeouts, 408, 409, 429 and 5xx up to ``judge.max_retries`` times with exponential backoff (0.5 s doubling to
8 s, with jitter) and waits what a ``Retry-After`` / ``retry-after-ms`` header says when that is over 0 and at
most 120 s (``Retry-After: 0`` falls back to the backoff; over 120 s it does not retry). What it finally
gives up on becomes a verdict with ``retryable=True``, so that the next run asks again; a 4xx other than
408/409/429 (bad request, auth, unknown model) is ``retryable=False``: asking again would fail again.

The API key is read from the environment variable named by ``judge.api_key_env`` and handed to the client only:
it is never logged, never put in an error message or a verdict (errors carry the exception class and the HTTP
status, never a response body or headers).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai

from rlthf.config import ConfigError, JudgeConfig
from rlthf.judges.base import verdict_batch
from rlthf.judges.parse import parse_preference, safe_parse
from rlthf.judges.prompts import ANSWER_PREFIX

log = logging.getLogger("rlthf")

# 4xx statuses that are transient (the client retries them too): request timeout, lock conflict, rate limit.
TRANSIENT_4XX = frozenset({408, 409, 429})
UNPARSEABLE = "unparseable answer"
TRUNCATED = "truncated answer"
# alternatives asked for at each generated token in logprob mode (OpenAI's most; the losing letter of a
# confident judge may still be missing, see answer_logprobs)
TOP_LOGPROBS = 20


class OpenAIJudge:
    """Ray Data callable class: a batch of requests (``REQUEST_COLUMNS``) to a batch of verdicts, one per request
    in request order, asking an OpenAI-compatible chat endpoint with up to ``config.concurrency`` requests in
    flight. Works on a plain dict of numpy arrays too.

    Each request is a chat completion (system + user message, ``temperature``, ``max_tokens=max_new_tokens``)
    whose answer is read by :func:`rlthf.judges.parse.parse_preference`; one that cannot be read gets preference
    ``""`` and error ``"unparseable answer"`` (``"truncated answer"`` when generation stopped at ``max_tokens``),
    with the text in ``raw``. In ``judge.mode`` ``logprob`` it also asks for the top log-probabilities of each
    generated token and keeps those of ``A`` and ``B`` where the answer names one (:func:`answer_logprobs`):
    the judge's confidence, and the tie-breaker of pairs whose two orders disagree.

    The key's variable must be set where the class is built: on Ray, in the actor's environment (set it before
    ``ray.init`` starts a local Ray, or pass it in a ``runtime_env``'s ``env_vars``).
    """

    def __init__(self, config: JudgeConfig):
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise ConfigError(f"judge.api_key_env: the environment variable {config.api_key_env} is not set or "
                              "empty; put the API key in it (for a local server any non-empty value works)")
        self.config = config
        self.client = openai.OpenAI(base_url=config.base_url, api_key=api_key, max_retries=config.max_retries,
                                    timeout=config.timeout_s)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        answers: list[dict] = []
        if n:
            with ThreadPoolExecutor(max_workers=min(self.config.concurrency, n),
                                    thread_name_prefix="openai-judge") as pool:
                answers = list(pool.map(self.ask, batch["system"], batch["user"]))  # map keeps request order
        failed = [a["error"] for a in answers if a["retryable"]]
        if failed:
            log.warning("openai judge: %d of %d requests failed after %d retries (first: %s); a rerun asks them "
                        "again", len(failed), n, self.config.max_retries, failed[0])
        columns = ("preference", "raw", "logprob_a", "logprob_b", "prompt_tokens", "completion_tokens", "error",
                   "retryable")
        return verdict_batch(batch, **{c: [a[c] for a in answers] for c in columns})

    def ask(self, system: str, user: str) -> dict:
        """One verdict's fields for one request; never raises."""
        try:
            logprobs = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.config.mode == "logprob" else {}
            response = self.client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "system", "content": str(system)}, {"role": "user", "content": str(user)}],
                temperature=self.config.temperature,
                max_tokens=self.config.max_new_tokens,
                **logprobs,
            )
            return _answer(response)  # inside the try: a malformed response fails this request only
        except openai.APIStatusError as err:  # the client's retries are spent, or the status is not retried
            status, hint = err.status_code, ""
            if status == 400 and self.config.mode == "logprob":
                hint = " (judge.mode logprob asks for logprobs: for an endpoint without them, judge.mode generate)"
            return _failure(f"{type(err).__name__}: {status}{hint}", retryable=status in TRANSIENT_4XX or status >= 500)
        except openai.APIConnectionError as err:  # APITimeoutError too; its message is a fixed short text
            return _failure(f"{type(err).__name__}: {err.message}", retryable=True)
        except Exception as err:  # a malformed response and the like: this request fails, the batch goes on
            return _failure(f"{type(err).__name__}: {self._redact(str(err))[:200]}", retryable=False)

    def _redact(self, text: str) -> str:
        key = self.client.api_key
        return text.replace(key, "<redacted>") if isinstance(key, str) and key else text


def _answer(response) -> dict:
    usage = getattr(response, "usage", None)
    choices = getattr(response, "choices", None) or []
    choice = choices[0] if choices else None
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None) or ""
    preference = safe_parse(parse_preference, content) or ""
    error = ""
    if not preference:
        error = TRUNCATED if getattr(choice, "finish_reason", None) == "length" else UNPARSEABLE
    logprob_a, logprob_b = answer_logprobs(token_alternatives(getattr(choice, "logprobs", None)))
    return {"preference": preference, "raw": content, "error": error, "retryable": False,
            "logprob_a": logprob_a, "logprob_b": logprob_b,
            "prompt_tokens": int(getattr(usage, "prompt_tokens", None) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", None) or 0)}


def _failure(error: str, *, retryable: bool) -> dict:
    return {"preference": "", "raw": "", "error": error, "retryable": retryable, "logprob_a": np.nan,
            "logprob_b": np.nan, "prompt_tokens": 0, "completion_tokens": 0}


def token_alternatives(logprobs) -> list[tuple[str, dict[str, float]]]:
    """Each generated token with its top alternatives' log-probabilities, from a choice's ``logprobs`` in the
    chat format (``content``: tokens with ``top_logprobs``, as OpenAI and vLLM send it) or the completions
    format (``tokens`` and ``top_logprobs`` as token -> log-prob maps, as llama-cpp-python's server sends it
    for chat too); empty when there are none."""
    if logprobs is None:
        return []
    content = getattr(logprobs, "content", None)
    if content:
        return [(str(t.token), {str(alt.token): float(alt.logprob) for alt in (t.top_logprobs or [])}) for t in content]
    extra = getattr(logprobs, "model_extra", None) or {}
    tokens, tops = extra.get("tokens") or [], extra.get("top_logprobs") or []
    return [(str(token), {str(k): float(v) for k, v in (top or {}).items()}) for token, top in zip(tokens, tops)]


def answer_logprobs(tokens: list[tuple[str, dict[str, float]]], prefix: str = ANSWER_PREFIX) -> tuple[float, float]:
    """The log-probabilities of the answers ``A`` and ``B`` at the generated token that follows ``prefix``
    (``preference: "Response ``), read from that token's top alternatives; NaN, NaN where the answer has no such
    token. A tokenizer may merge the space into the letter (``" A"``) or the closing quote into it (``A"``): an
    alternative counts for a letter when it is that letter with spaces and punctuation around it. A letter
    missing from the alternatives gets the smallest log-probability listed, an upper bound on its own: the
    margin between the two is then a lower bound on the model's, never an overstatement of its confidence.

    >>> answer_logprobs([('preference: "Response', {}), (' B', {' B': -0.1, ' A': -2.5}), ('"', {})])
    (-2.5, -0.1)
    """
    stem, text = prefix.rstrip(), ""
    for token, alternatives in tokens:
        if text.rstrip().endswith(stem) and alternatives:
            letters = {letter: [lp for alt, lp in alternatives.items() if alt.strip(' "\'.,:') == letter]
                       for letter in ("A", "B")}
            if not letters["A"] and not letters["B"]:
                return np.nan, np.nan
            floor = min(alternatives.values())
            return tuple(max(found) if found else floor for found in (letters["A"], letters["B"]))
        text += token
    return np.nan, np.nan
