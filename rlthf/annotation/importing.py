"""Answers from files: a jsonl file, or a labeling tool's export (:mod:`rlthf.annotation.formats`), each record
checked against the open request before anything is written."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from rlthf.annotation import formats
from rlthf.annotation.store import (Answer, InvalidAnswer, answer_record, answers_needed, answers_path, locked,
                                    open_iteration, read_answer_records, request_path)
from rlthf.core.labels import LABELS
from rlthf.rundir import RunDir, atomic_write_jsonl, read_jsonl

IMPORT_FORMATS = ("jsonl", "labelstudio", "argilla")


def import_answers(run_dir: str | Path | RunDir, answers_file: str | Path,
                   format: Literal["jsonl", "labelstudio", "argilla"] = "jsonl") -> tuple[int, int]:
    """Add people's answers to the open request of ``run_dir``.

    ``format`` is ``jsonl``: lines of ``{"id", "label"}`` with an optional ``"annotator"``, labels ``a``/``b`` in
    any case; ``labelstudio``: Label Studio's JSON export of the tasks of ``rlthf annotate export``; ``argilla``:
    the folder (or its ``records.json``) of an Argilla dataset exported with ``Dataset.to_disk``
    (:mod:`rlthf.annotation.formats`). The file may answer part of the request. Every record is checked before anything is
    written, so a bad file changes nothing.

    Returns
    -------
    iteration : int
        The iteration whose request the answers went to.
    imported : int
        How many answers were added.

    Raises
    ------
    InvalidAnswer
        For the first bad record: malformed, not an object, a missing or bad id or label, an id that is not in the
        open request, one the same person answers twice in the file (the same way: a duplicate, the other way: a
        conflict), one already answered, or more answers for a pair than it takes (two for an overlap pair).
    ValueError
        When no request is open (or, inconsistently, more than one), or ``format`` is unknown.
    """
    if format not in IMPORT_FORMATS:
        raise ValueError(f"unknown answers format {format!r}; expected one of {', '.join(IMPORT_FORMATS)}")
    if format == "jsonl":
        answers = read_jsonl_answers(answers_file)
    else:
        answers = (formats.read_labelstudio_answers if format == "labelstudio"
                   else formats.read_argilla_answers)(answers_file)
    iteration = open_iteration(run_dir)
    with locked(run_dir, iteration):  # the page may be appending to the same log
        existing = read_jsonl(answers_path(run_dir, iteration))
        new = check_answers(run_dir, iteration, answers, answers_file, unit="line" if format == "jsonl" else "record")
        atomic_write_jsonl(answers_path(run_dir, iteration), existing + new)
    return iteration, len(new)


def check_answers(run_dir: str | Path | RunDir, iteration: int, answers: list[Answer], path: str | Path, *,
                  unit: str = "line") -> list[dict]:
    """Check ``answers`` against the request of ``iteration`` and its answer log; return the log records to
    append. Raises :class:`InvalidAnswer` for the first bad one (see :func:`import_answers`)."""
    needed = answers_needed(run_dir, iteration)
    standing = read_answer_records(run_dir, iteration)
    count = {pid: len(a) for pid, a in standing.items()}
    seen: dict[tuple[str, str], Answer] = {}
    first_of_id: dict[str, Answer] = {}
    new = []
    for answer in answers:
        def bad(reason: str) -> InvalidAnswer:
            return InvalidAnswer(path, answer.position, answer.field, reason, unit)

        pid = answer.id
        if pid not in needed:
            raise InvalidAnswer(path, answer.position, answer.id_field,
                                f"{pid!r} is not in the open request ({request_path(run_dir, iteration)})", unit)
        earlier = seen.get((pid, answer.annotator))
        if earlier is not None:
            how = "duplicate of" if earlier.label == answer.label else "conflicts with"
            raise bad(f"{pid!r}: {how} {unit} {earlier.position} (the same annotator {answer.annotator!r})")
        if any(a["annotator"] == answer.annotator for a in standing.get(pid, [])):
            raise bad(f"{pid!r} is already answered by {answer.annotator!r}")
        if count.get(pid, 0) >= needed[pid]:
            other = first_of_id.get(pid)
            if other is None:
                raise bad(f"{pid!r} is already answered")
            how = "agrees with" if other.label == answer.label else "conflicts with"
            raise bad(f"{pid!r}: one answer too many; it {how} {unit} {other.position} and the pair takes "
                      f"{needed[pid]} answer(s)")
        seen[(pid, answer.annotator)] = answer
        first_of_id.setdefault(pid, answer)
        count[pid] = count.get(pid, 0) + 1
        new.append(answer_record(pid, answer.label, answer.annotator, **answer.extra))
    return new


def read_jsonl_answers(path: str | Path) -> list[Answer]:
    """The answers of a jsonl file, each line parsed and its fields checked (not yet against a request)."""
    answers = []
    for line, text in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), 1):
        if text.strip():
            pid, label, annotator = _parse_answer_line(path, line, text)
            answers.append(Answer(line, "id", "id", pid, label, annotator))
    return answers


def _parse_answer_line(path: str | Path, line: int, text: str) -> tuple[str, str, str]:
    try:
        record: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidAnswer(path, line, "json", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise InvalidAnswer(path, line, "json", f"expected a JSON object, got {type(record).__name__}")
    pid = record.get("id")
    if not isinstance(pid, str) or not pid:
        raise InvalidAnswer(path, line, "id", "missing" if pid is None else f"expected a pair id, got {pid!r}")
    label = record.get("label")
    if label is None:
        raise InvalidAnswer(path, line, "label", "missing")
    if not isinstance(label, str) or label.strip().lower() not in LABELS:
        raise InvalidAnswer(path, line, "label", f"expected 'a' or 'b', got {label!r}")
    annotator = record.get("annotator", "file_import")
    if not isinstance(annotator, str):
        raise InvalidAnswer(path, line, "annotator", f"expected a string, got {annotator!r}")
    return pid, label.strip().lower(), annotator
