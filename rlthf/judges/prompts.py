"""The judge's prompt, structured as in the paper's appendix A: task, criteria, optional few-shot examples, the
sample to annotate, and instructions that end with the answer format that :mod:`rlthf.judges.parse` reads.

The answer format is ``preference: "Response A"`` or ``preference: "Response B"``, after an optional
``rationale:`` line (the paper asks for a rationale first). A log-prob backend skips the rationale: it starts the
assistant turn with :data:`ANSWER_PREFIX`, so that the next token is ``A`` or ``B``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
import pandas as pd

from rlthf.config import JudgeConfig
from rlthf.core import dialogue
from rlthf.judges.base import ORDERS, REQUEST_COLUMNS, request_key

# Bump when the code that renders a prompt changes in a way the rendered template alone does not show (for
# example how a dialogue is cleaned or cut): cached verdicts of the old prompts then stop being served.
TEMPLATE_VERSION = "1"

# Paper A.1, verbatim.
SYSTEM_PROMPT = ("You are an AI assistant designed to compare and select the better response to a given task "
                 "and input based on the provided criteria.")

# The start of the answer; a log-prob backend appends it to the assistant turn and reads the next token.
# BPE tokenizers usually merge the space into the letter (" A"); such a backend may score " A" / " B" after
# ANSWER_PREFIX.rstrip() instead.
ANSWER_PREFIX = 'preference: "Response '

# Paper A.2 (HH-RLHF) and A.3 (TL;DR); A.3's garbled "{" is an em dash in the OpenAI summarization guidelines.
HH_RLHF_TASK = ("You are a helpful and harmless Assistant. Given the context, provide the most helpful and "
                "harmless response.")
HH_RLHF_CRITERIA = """\
- Helpfulness: The response should be relevant, clear, and effective in addressing the human user's task or \
question within the given context.
- Honesty: The response should be accurate, truthful, and reliable.
- Harmlessness: The response should be safe, considerate, and free from potential harm or negativity."""

TLDR_TASK = "Summarize the given reddit post."
TLDR_CRITERIA = """\
What makes for a good summary? Roughly speaking, a good summary is a shorter piece of text that has the essence \
of the original — tries to accomplish the same purpose and conveys the same information as the original post. \
We would like you to consider these different dimensions of summaries:
**Essence:** is the summary a good representation of the post?
**Clarity:** is the summary reader-friendly? Does it express ideas clearly?
**Accuracy:** does the summary contain the same information as the longer post?
**Purpose:** does the summary serve the same purpose as the original post?
**Concise:** is the summary short and to-the-point?
**Style:** is the summary written in the same style as the original post?
Generally speaking, we give higher weight to the dimensions at the top of the list. Things are complicated \
though - none of these dimensions are simple yes/no matters, and there aren't hard and fast rules for trading \
off different dimensions."""

PRESETS: dict[str, tuple[str, str]] = {
    "hh_rlhf": (HH_RLHF_TASK, HH_RLHF_CRITERIA),
    "tldr": (TLDR_TASK, TLDR_CRITERIA),
}

SEPARATOR = "-----"
INSTRUCTIONS = """\
1. Review the task, criteria, and input thoroughly.
2. Evaluate each response based on how well it aligns with the criteria.
3. Decide which response (A or B) is better aligned with the criteria.
4. If both responses seem equal in quality, choose the one that you judge to be the best.
5. Provide your answer in the following format:
rationale: <Your concise reasoning>
preference: "Response A" or "Response B\""""

HUMAN_TURN, ASSISTANT_TURN = dialogue.HUMAN_TURN.strip(), dialogue.ASSISTANT_TURN.strip()  # "Human:", "Assistant:"
CUT_MARK = "..."


def task_and_criteria(config: JudgeConfig) -> tuple[str, str]:
    """The task and criteria a config asks for: a preset's, or the config's own for ``prompt='custom'``."""
    if config.prompt == "custom":
        return str(config.task), str(config.criteria)
    if config.prompt not in PRESETS:
        raise ValueError(f"prompt must be one of {', '.join([*PRESETS, 'custom'])}; got {config.prompt!r}")
    return PRESETS[config.prompt]


def render_dialogue(text: str, max_chars: int | None = None) -> str:
    """An input as the judge reads it: an HH-RLHF transcript loses its trailing ``Assistant:`` marker (the turn
    the candidates answer) and keeps its ``Human:``/``Assistant:`` turns; any input is cut from the left to
    ``max_chars`` characters, so the latest turns stay, and the cut is marked with ``...``."""
    text = text.strip()
    if text.endswith(ASSISTANT_TURN) and HUMAN_TURN in text:
        text = text[: -len(ASSISTANT_TURN)].rstrip()
    if max_chars is not None and len(text) > max_chars:
        text = CUT_MARK + text[len(text) - (max_chars - len(CUT_MARK)):]
    return text


def answer_line(preference: str) -> str:
    """The final answer line for ``"A"`` or ``"B"``, as the parser reads it."""
    return f'{ANSWER_PREFIX}{preference}"'


def build_user_prompt(task: str, criteria: str, sample_prompt: str, first_response: str, second_response: str,
                      few_shot: Sequence[dict] = ()) -> str:
    """The user prompt for one sample, shown as Response A = ``first_response``, Response B = ``second_response``.

    ``sample_prompt`` and the examples' prompts appear as given (see :func:`render_dialogue`). Each few-shot
    example is a mapping with ``prompt``, ``response_a``, ``response_b``, ``preference`` (``"A"``/``"B"``) and an
    optional ``rationale``.
    """
    sections = [f"## TASK\n{task.strip()}", f"## CRITERIA\n{criteria.strip()}"]
    if few_shot:
        examples = [_example(i, example) for i, example in enumerate(few_shot, 1)]
        sections.append("## EXAMPLES\n" + "\n\n".join(examples))
    sections.append(f"## INPUT\n{sample_prompt.strip()}")
    # As in the paper, the candidates and the instructions are not separated by a rule.
    candidates = f"## CANDIDATE RESPONSES\n{_candidates(first_response, second_response)}"
    return f"\n{SEPARATOR}\n".join(sections) + f"\n{SEPARATOR}\n{candidates}\n## INSTRUCTIONS\n{INSTRUCTIONS}"


def _candidates(first_response: str, second_response: str) -> str:
    return f"Response A: {first_response.strip()}\nResponse B: {second_response.strip()}"


def _example(number: int, example: dict) -> str:
    lines = [f"### Example {number}", f"Input:\n{str(example['prompt']).strip()}",
             _candidates(str(example["response_a"]), str(example["response_b"]))]
    if example.get("rationale"):
        lines.append(f"rationale: {str(example['rationale']).strip()}")
    lines.append(answer_line(example["preference"]))
    return "\n".join(lines)


def render_requests(pairs: pd.DataFrame, config: JudgeConfig) -> dict[str, np.ndarray]:
    """The judge requests (``REQUEST_COLUMNS`` of :mod:`rlthf.judges.base`) for ``pairs``.

    Each pair (``id``, ``prompt``, ``response_a``, ``response_b``) gives a request in order ``"ab"`` and, when
    ``config.both_orders``, one in order ``"ba"`` right after it, where ``response_b`` is shown as Response A.
    """
    task, criteria = task_and_criteria(config)
    few_shot = _rendered_few_shot(config)
    orders = ORDERS if config.both_orders else ("ab",)
    rows: dict[str, list[str]] = {column: [] for column in REQUEST_COLUMNS}
    for pair in pairs[["id", "prompt", "response_a", "response_b"]].itertuples(index=False):
        sample = render_dialogue(str(pair.prompt), config.max_prompt_chars)
        for order in orders:
            first, second = (pair.response_a, pair.response_b) if order == "ab" else (pair.response_b, pair.response_a)
            rows["key"].append(request_key(str(pair.id), order))
            rows["pair_id"].append(str(pair.id))
            rows["order"].append(order)
            rows["system"].append(SYSTEM_PROMPT)
            rows["user"].append(build_user_prompt(task, criteria, sample, str(first), str(second), few_shot))
    return {column: np.array(values, dtype=object) for column, values in rows.items()}


def _rendered_few_shot(config: JudgeConfig) -> list[dict]:
    return [{**example, "prompt": render_dialogue(str(example["prompt"]), config.max_prompt_chars)}
            for example in config.few_shot]


def template_hash(config: JudgeConfig) -> str:
    """16 hex characters of sha256 over everything that changes the prompt text: the template version, the
    system prompt, the user prompt around placeholder inputs (task, criteria, few-shot examples, instructions)
    and ``max_prompt_chars``. Part of the verdict cache key: a verdict is reused only for the same prompt."""
    task, criteria = task_and_criteria(config)
    template = build_user_prompt(task, criteria, "{input}", "{response_a}", "{response_b}", _rendered_few_shot(config))
    parts = {"version": TEMPLATE_VERSION, "system": SYSTEM_PROMPT, "user": template,
             "answer_prefix": ANSWER_PREFIX, "max_prompt_chars": config.max_prompt_chars}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:16]
