"""HH-RLHF dialogues: ``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcripts, parsed in one place.

A prompt ends with an open ``\\n\\nAssistant:`` turn that the two responses continue. The page shows a prompt as
turns, DPO feeds it to a chat template as messages, the judge reads it without the open turn, and the loaders
split a whole transcript into prompt and response at its last assistant turn.
"""
from __future__ import annotations

import re

HUMAN_TURN = "\n\nHuman:"
ASSISTANT_TURN = "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
ROLES = {"Human": "user", "Assistant": "assistant", "": "user"}


def dialogue_turns(prompt: str) -> list[tuple[str, str]]:
    """An HH-RLHF prompt as ``[(speaker, text), ...]`` without empty turns (the trailing ``Assistant:`` that the
    responses continue); text before the first marker, or a prompt without markers, is a turn of speaker ``""``.

    >>> dialogue_turns("\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: bye\\n\\nAssistant:")
    [('Human', 'hi'), ('Assistant', 'hello'), ('Human', 'bye')]
    """
    parts = TURN.split("\n\n" + prompt.lstrip("\n"))
    turns = [("", parts[0].strip())] + [(speaker, text.strip()) for speaker, text in zip(parts[1::2], parts[2::2])]
    return [(speaker, text) for speaker, text in turns if text]


def chat_messages(prompt: str) -> list[dict]:
    """Chat messages of an HH-RLHF prompt; the open ``Assistant:`` turn is dropped (a chat template opens it).

    Text before the first ``Human:`` turn joins that turn's user message; a prompt without a ``Human:`` turn is one
    user message.
    """
    if HUMAN_TURN not in prompt:
        return [{"role": "user", "content": prompt.strip()}]
    head, _, rest = prompt.partition(HUMAN_TURN)
    messages = [{"role": ROLES[speaker], "content": text} for speaker, text in dialogue_turns(HUMAN_TURN + rest)]
    if head.strip():
        messages[0]["content"] = head.strip() + "\n" + messages[0]["content"]
    return messages


def split_transcript(transcript: str) -> tuple[str, str] | None:
    """A whole transcript as (prompt up to and including its last ``\\n\\nAssistant:``, the response after it),
    verbatim; None when it has no assistant turn."""
    cut = transcript.rfind(ASSISTANT_TURN)
    if cut < 0:
        return None
    cut += len(ASSISTANT_TURN)
    return transcript[:cut], transcript[cut:]
