"""The ``transformers`` judge backend: a local causal LM (by default SmolLM2-135M-Instruct from a GGUF file) on
CPU or one GPU, as a Ray Data callable class.

``TransformersJudge(config)`` loads the tokenizer and the model once (per Ray actor); calling it on a batch of
requests (the request columns of :mod:`rlthf.judges.base`) returns a batch of verdicts in the same order. It
works on a plain ``dict`` of numpy arrays as well, without Ray.

Each request is rendered with the tokenizer's chat template (system + user message, then the open assistant
turn), and read in one of two ways (``judge.mode``):

``logprob``
    The assistant turn starts with :data:`~rlthf.judges.prompts.ANSWER_PREFIX` (``preference: "Response ``) and
    one forward pass per batch reads the log-probabilities of the answer tokens ``A`` and ``B`` that would
    come next. The answer tokens are found as the first tokens where ``ANSWER_PREFIX + "A"`` and
    ``ANSWER_PREFIX + "B"`` tokenize differently, and the context is the tokens the two share: a BPE tokenizer
    merges the prefix's trailing space into the letter, so for SmolLM2 the context ends with ``Response``
    (id 12463) and the answer tokens are ``" A"`` (id 330) and ``" B"`` (id 389), not the bare ``A``/``B``
    (49/50) that would follow a lone space token, a tokenization the model never saw in training. Rows are
    right-padded and the last hidden state of each row is gathered before the LM head, so no full-vocabulary
    logits are materialised for every position. ``raw`` is ``"logprob"``, ``completion_tokens`` 0.
``generate``
    ``generate`` greedily (``temperature`` 0) or by sampling seeded from the batch's keys, left-padded, up to
    ``max_new_tokens``; the new text is parsed with :func:`~rlthf.judges.parse.parse_preference`.

A prompt longer than the model's context is cut from the left of the user prompt's tokens (a warning is
logged and :attr:`TransformersJudge.truncated` counts it); a request that still cannot be judged gets its own
``error`` and never fails the batch.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from rlthf.config import JudgeConfig
from rlthf.judges.base import verdict_batch
from rlthf.judges.parse import parse_logprobs, parse_preference, safe_parse
from rlthf.judges.prompts import ANSWER_PREFIX

logger = logging.getLogger(__name__)

UNPARSEABLE = "unparseable answer"
CUT_MARK = "..."
_CUT_MARGIN = 8  # extra user tokens cut, as decoding and re-encoding a cut may not give back the same count


class TransformersJudge:
    """Judge requests with a local Hugging Face causal LM (Ray Data callable class).

    Parameters
    ----------
    config : JudgeConfig
        ``model`` (a path, hub name or ``pkg:MODULE``), ``gguf_file`` (a GGUF file inside ``model``, or None for
        safetensors weights), ``mode`` ({'logprob', 'generate'}), ``max_new_tokens``, ``temperature``,
        ``cpus_per_actor`` (torch threads) and ``gpus_per_actor`` (> 0: CUDA when available).

    Attributes
    ----------
    max_context : int
        Tokens the model reads: prompt, answer prefix and (generate) new tokens.
    answer_token_ids : tuple of int
        The token ids scored for ``A`` and ``B`` in logprob mode.
    truncated : int
        Requests whose user prompt was cut to fit ``max_context`` so far.
    """

    def __init__(self, config: JudgeConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlthf.models import model_source

        self.config = config
        torch.set_num_threads(config.cpus_per_actor)
        use_gpu = config.gpus_per_actor > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        # a local GGUF file (weights, vocabulary, chat template) is read through its float32 copy, made once
        source, kwargs = model_source(config.model, config.gguf_file)
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_context = _context_length(self.model.config, self.tokenizer)
        self.prefix_ids, self.answer_token_ids = answer_tokens(self.tokenizer, ANSWER_PREFIX)
        self.truncated = 0

    # ---- the Ray Data entry point
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        if n == 0:
            return verdict_batch(batch, preference=[], raw=[])
        if self.config.mode == "logprob":
            return self._judge_logprob(batch)
        if self.config.mode == "generate":
            return self._judge_generate(batch)
        raise ValueError(f"judge.mode must be 'logprob' or 'generate'; got {self.config.mode!r}")

    # ---- prompts
    def render(self, system: str, user: str) -> str:
        """The prompt text of one request: the chat template with the assistant turn opened."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\n"

    def encode_prompt(self, key: str, system: str, user: str, reserve: int) -> list[int]:
        """The prompt's token ids, the user prompt cut from the left so that ``reserve`` more tokens fit."""
        budget = self.max_context - reserve
        ids = self._encode(self.render(system, user))
        if len(ids) <= budget:
            return ids
        user_ids = self._encode(user)
        cut = len(ids) - budget + len(self._encode(CUT_MARK)) + _CUT_MARGIN
        while cut < len(user_ids):
            ids = self._encode(self.render(system, CUT_MARK + self.tokenizer.decode(user_ids[cut:])))
            if len(ids) <= budget:
                self.truncated += 1
                logger.warning("judge request %s: the user prompt was cut by %d of its %d tokens to fit the "
                               "model's context of %d tokens", key, cut, len(user_ids), self.max_context)
                return ids
            cut += len(ids) - budget + _CUT_MARGIN
        raise PromptTooLong(f"prompt too long: the system prompt and the chat template alone exceed the "
                            f"{budget} tokens left of the model's context of {self.max_context}")

    def _encode(self, text: str) -> list[int]:
        # the chat template writes the special tokens (and BOS where the model wants one) itself
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompts(self, batch, reserve: int) -> tuple[list[list[int] | None], list[str]]:
        """Token ids per request (None where it failed) and an error per request."""
        prompts: list[list[int] | None] = []
        errors: list[str] = []
        for key, system, user in zip(batch["key"], batch["system"], batch["user"]):
            try:
                prompts.append(self.encode_prompt(str(key), str(system), str(user), reserve))
                errors.append("")
            except Exception as err:  # noqa: BLE001 - one bad request must not fail the batch
                prompts.append(None)
                errors.append(_describe(err))
        return prompts, errors

    # ---- logprob mode
    def _judge_logprob(self, batch) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        prompts, errors = self._prompts(batch, reserve=len(self.prefix_ids) + 1)
        sequences = [None if p is None else p + self.prefix_ids for p in prompts]
        scores = np.full((n, 2), np.nan)
        retryable = [False] * n
        live = [i for i, s in enumerate(sequences) if s is not None]
        try:
            if live:
                scores[live] = self.score_answers([sequences[i] for i in live])
        except Exception:  # noqa: BLE001 - the batch failed as a whole: score row by row to isolate the culprit
            for i in live:
                try:
                    scores[i] = self.score_answers([sequences[i]])[0]
                except Exception as err:  # noqa: BLE001
                    errors[i], retryable[i] = _describe(err), _transient(err)
        preference = []
        for i in range(n):
            choice = safe_parse(parse_logprobs, *scores[i]) if not errors[i] else None
            if choice is None and not errors[i]:
                errors[i] = "no preference: the log-probabilities of A and B are equal or not finite"
            preference.append(choice or "")
        return verdict_batch(
            batch, preference=preference, raw=["logprob"] * n, logprob_a=scores[:, 0], logprob_b=scores[:, 1],
            prompt_tokens=[0 if s is None else len(s) for s in sequences], completion_tokens=[0] * n,
            error=errors, retryable=retryable)

    def score_answers(self, sequences: list[list[int]]) -> np.ndarray:
        """Log-probabilities (rows x 2) of the answer tokens A and B right after each token sequence.

        One forward pass: rows are right-padded, the last real position of each row is gathered from the
        decoder's final hidden states and only those go through the LM head.
        """
        import torch

        lengths = torch.tensor([len(s) for s in sequences])
        input_ids = torch.full((len(sequences), int(lengths.max())), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        with torch.inference_mode():
            hidden = self.model.get_decoder()(input_ids=input_ids.to(self.device),
                                              attention_mask=attention_mask.to(self.device)).last_hidden_state
            last = hidden[torch.arange(len(sequences), device=self.device), (lengths - 1).to(self.device)]
            logits = self.model.get_output_embeddings()(last).float()
            logprobs = torch.log_softmax(logits, dim=-1)[:, list(self.answer_token_ids)]
        return logprobs.cpu().numpy().astype(np.float64)

    # ---- generate mode
    def _judge_generate(self, batch) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        keys = np.asarray(batch["key"], dtype=object)
        prompts, errors = self._prompts(batch, reserve=self.config.max_new_tokens)
        texts, counts = [""] * n, [0] * n
        retryable = [False] * n
        live = [i for i, p in enumerate(prompts) if p is not None]
        try:
            if live:
                results = self.generate([prompts[i] for i in live], seed=_seed(keys[live]))
                for i, result in zip(live, results):
                    texts[i], counts[i] = result
        except Exception:  # noqa: BLE001 - isolate the row that fails the batch
            for i in live:
                try:
                    texts[i], counts[i] = self.generate([prompts[i]], seed=_seed(keys[[i]]))[0]
                except Exception as err:  # noqa: BLE001
                    errors[i], retryable[i] = _describe(err), _transient(err)
        preference = []
        for i in range(n):
            choice = safe_parse(parse_preference, texts[i]) if not errors[i] else None
            if choice is None and not errors[i]:
                errors[i] = UNPARSEABLE
            preference.append(choice or "")
        return verdict_batch(
            batch, preference=preference, raw=texts, prompt_tokens=[0 if p is None else len(p) for p in prompts],
            completion_tokens=counts, error=errors, retryable=retryable)

    def generate(self, prompts: list[list[int]], *, seed: int = 0) -> list[tuple[str, int]]:
        """The new text and its token count (up to and with the end-of-turn token) for each prompt."""
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):  # left padding: every row's next token is at the end
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        sampling: dict[str, Any] = {"do_sample": False}
        if self.config.temperature > 0:
            torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": self.config.temperature, "top_k": 0, "top_p": 1.0}
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                max_new_tokens=self.config.max_new_tokens, pad_token_id=pad, **sampling)
        stops = _stop_ids(self.model.generation_config, self.tokenizer)
        results = []
        for row in output[:, width:].tolist():
            count = len(row)
            for position, token in enumerate(row):
                if token in stops:
                    count = position + 1
                    break
            text = self.tokenizer.decode(row[:count], skip_special_tokens=True)
            results.append((text.strip(), count))
        return results


class PromptTooLong(ValueError):
    """A request that does not fit the model's context even with its user prompt cut."""


def answer_tokens(tokenizer, prefix: str, choices: tuple[str, str] = ("A", "B")) -> tuple[list[int], tuple[int, int]]:
    """The context ids of ``prefix`` and the ids of the first tokens of the two ``choices`` that follow it.

    Tokenizes ``prefix + "A"`` and ``prefix + "B"``: the ids they share are the context, the first ids where
    they differ are the answer tokens. A tokenizer that merges a trailing space of the prefix into the letter
    (BPE: ``" A"``) thus gets the space in the answer token, not in the context.
    """
    ids_a = tokenizer(prefix + choices[0], add_special_tokens=False)["input_ids"]
    ids_b = tokenizer(prefix + choices[1], add_special_tokens=False)["input_ids"]
    shared = 0
    while shared < min(len(ids_a), len(ids_b)) and ids_a[shared] == ids_b[shared]:
        shared += 1
    if shared >= min(len(ids_a), len(ids_b)):
        raise ValueError(f"the tokenizer gives no distinct answer tokens for {choices[0]} and {choices[1]} "
                         f"after {prefix!r}")
    token_a, token_b = ids_a[shared], ids_b[shared]
    for choice, token in zip(choices, (token_a, token_b)):
        if tokenizer.decode([token]).strip() != choice:
            raise ValueError(f"the answer token for {choice} after {prefix!r} decodes to "
                             f"{tokenizer.decode([token])!r}, not {choice!r} alone")
    return ids_a[:shared], (token_a, token_b)


def _context_length(model_config, tokenizer) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        return int(tokenizer.model_max_length)
    return 2048


def _stop_ids(generation_config, tokenizer) -> set[int]:
    eos = generation_config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    return stops


def _seed(keys) -> int:
    """A sampling seed from the requests' keys: the same batch samples the same answers on a rerun."""
    return int.from_bytes(hashlib.sha256("\n".join(map(str, keys)).encode("utf-8")).digest()[:4], "little")


def _describe(err: Exception) -> str:
    if isinstance(err, PromptTooLong):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _transient(err: Exception) -> bool:
    """Out of (GPU) memory may pass when the batch or the actor is smaller; any other failure repeats."""
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


__all__ = ["TransformersJudge", "PromptTooLong", "answer_tokens", "UNPARSEABLE"]
