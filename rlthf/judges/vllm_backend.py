"""The ``vllm`` judge backend: an in-process vLLM engine on GPU workers through Ray's own ``ray.data.llm``.

Written against Ray 2.60's ``ray.data.llm.build_processor`` and ``vLLMEngineProcessorConfig``; it needs
``pip install rlthf[vllm]`` (vLLM, the version Ray pins) and GPUs, and it was **not run** on this project's
CPU machines. It generates the short answer and parses it (``judge.mode`` ``logprob`` is not offered here:
the processor returns text). Rows that fail inside the engine come back with ``__inference_error__`` set
(``should_continue_on_error``; such rows skip the processor's postprocess, so verdicts are made after it)
and become retryable verdict errors instead of failing the job.
"""
from __future__ import annotations

from rlthf.config import JudgeConfig
from rlthf.judges.base import VERDICT_COLUMNS


def vllm_verdicts(requests, config: JudgeConfig):
    """Map a Dataset of requests to a Dataset of verdicts with a vLLM engine processor."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as err:
        raise ImportError(f"judge.backend=vllm needs vLLM and Ray's LLM extras: pip install rlthf[vllm] ({err})") from None
    from rlthf.models import resolve_model

    processor_config = vLLMEngineProcessorConfig(
        model_source=resolve_model(config.model),
        engine_kwargs={"max_model_len": 8192, "enable_prefix_caching": True},  # the system prompt repeats
        concurrency=config.num_actors,
        batch_size=config.batch_size,
        should_continue_on_error=True,
    )
    processor = build_processor(
        processor_config,
        preprocess=lambda row: dict(
            row,
            messages=[{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}],
            sampling_params={"temperature": config.temperature, "max_tokens": config.max_new_tokens},
        ),
    )
    # error rows bypass a processor's postprocess, so verdicts are made after it, for both kinds of row
    return processor(requests).map(_verdict_row).select_columns(list(VERDICT_COLUMNS))


def _verdict_row(row: dict) -> dict:
    from rlthf.judges.parse import parse_preference, safe_parse

    failure = row.get("__inference_error__") or ""
    text = row.get("generated_text") or ""
    preference = "" if failure else (safe_parse(parse_preference, text) or "")
    error = failure or ("" if preference else "unparseable answer")
    return {
        "key": row["key"], "pair_id": row["pair_id"], "order": row["order"], "preference": preference,
        "raw": text, "logprob_a": float("nan"), "logprob_b": float("nan"),
        "prompt_tokens": int(row.get("num_input_tokens") or 0),
        "completion_tokens": int(row.get("num_generated_tokens") or 0),
        "error": error, "retryable": bool(failure),
    }
