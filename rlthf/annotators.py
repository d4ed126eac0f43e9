"""Who answers an iteration's annotation batch: a simulated human, or people through files.

Each iteration ``k`` has a folder in the run directory::

    annotations/iter_{k}/request.jsonl   one line per pair to judge: id, prompt, response_a, response_b
    annotations/iter_{k}/answers.jsonl   one line per answer: {"id", "label": "a"|"b", "annotator", "time"}

The request never carries the AI or working label, so it cannot bias whoever answers. An answer is on disk
before the next question is asked, so a run killed mid-batch resumes without asking anyone twice.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol

import pandas as pd

from rlthf.data import LABELS, hash_unit
from rlthf.rundir import RunDir, append_jsonl_durable, atomic_write_jsonl, read_jsonl

REQUEST_COLUMNS = ("id", "prompt", "response_a", "response_b")


class AnnotationPending(Exception):
    """People still have to answer iteration ``iteration``'s request; the run stops here and resumes later."""

    def __init__(self, iteration: int, request_path: str | Path, missing: int, run_dir: str | Path) -> None:
        super().__init__(iteration, request_path, missing, run_dir)  # all in args: survives pickling
        self.iteration, self.request_path, self.missing, self.run_dir = iteration, Path(request_path), missing, run_dir

    def __str__(self) -> str:
        return (f"iteration {self.iteration}: {self.missing} answers missing for the pairs in {self.request_path}. "
                f"Answer them in a jsonl file of {{\"id\", \"label\": \"a\"|\"b\"}} lines, then run\n"
                f"  rlthf annotate import --run {self.run_dir} ANSWERS.jsonl\n"
                f"  rlthf run --config CONFIG\n"
                f"to import them and resume the run (a partial file is fine; the run resumes once all are in).")


class InvalidAnswer(ValueError):
    """A bad line in an answers file: the file, its 1-based line, the field and why."""

    def __init__(self, path: str | Path, line: int, field: str, reason: str) -> None:
        super().__init__(path, line, field, reason)
        self.path, self.line, self.field, self.reason = Path(path), line, field, reason

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: field '{self.field}': {self.reason}"


class Annotator(Protocol):
    """Answers an annotation batch.

    ``annotate`` gets the requested pairs (columns id, prompt, response_a, response_b) and returns
    ``{id: "a" | "b"}`` for every requested id, or raises :class:`AnnotationPending` when the answers will come
    later.
    """

    name: str

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]: ...


def iteration_dir(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return _root(run_dir) / "annotations" / f"iter_{iteration}"


def request_path(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return iteration_dir(run_dir, iteration) / "request.jsonl"


def answers_path(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return iteration_dir(run_dir, iteration) / "answers.jsonl"


def read_requested_ids(run_dir: str | Path | RunDir, iteration: int) -> list[str]:
    return [r["id"] for r in read_jsonl(request_path(run_dir, iteration))]


def read_answers(run_dir: str | Path | RunDir, iteration: int) -> dict[str, str]:
    """The answers given so far in ``iteration``: ``{id: "a" | "b"}`` (empty when there are none)."""
    return {r["id"]: r["label"] for r in read_jsonl(answers_path(run_dir, iteration))}


class SimulatedHuman:
    """Answers from known labels, the way the paper simulates human annotators.

    Parameters
    ----------
    run_dir : str or Path
        The run directory; requests and answers go under ``annotations/iter_{k}/``.
    truth : Mapping[str, str]
        Pair id to the human label, ``"a"`` or ``"b"``.
    error_rate : float, default=0.0
        Chance that an answer is flipped; decided per pair id by a seeded hash, so reruns flip the same pairs.
    seed : int, default=0
        Seeds which answers are wrong.
    """

    name = "simulated_human"

    def __init__(self, run_dir: str | Path | RunDir, truth: Mapping[str, str], *, error_rate: float = 0.0,
                 seed: int = 0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1]; got {error_rate}")
        self.run_dir, self.truth, self.error_rate, self.seed = run_dir, truth, error_rate, seed
        self.questions_asked = 0
        self.asked_ids: list[str] = []

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]:
        ids = _write_request(self.run_dir, iteration, requests, overwrite=True)
        answers_file = answers_path(self.run_dir, iteration)
        answers = read_answers(self.run_dir, iteration)  # a crashed attempt may have answered some already
        to_ask = [i for i in ids if i not in answers]
        for pid in to_ask:  # check every label before answering any, so a bad truth writes nothing
            if pid not in self.truth:
                raise KeyError(pid)
            if self.truth[pid] not in LABELS:
                raise ValueError(f"pair {pid}: no human label to simulate (got {self.truth[pid]!r})")
        wrong = hash_unit(self.seed, "human", to_ask) < self.error_rate
        for pid, is_wrong in zip(to_ask, wrong):
            label = _other(self.truth[pid]) if is_wrong else self.truth[pid]
            append_jsonl_durable(answers_file, _answer(pid, label, self.name))
            answers[pid] = label
            self.questions_asked += 1
            self.asked_ids.append(pid)
        return {pid: answers[pid] for pid in ids}


class FileQueueAnnotator:
    """Answers from people: writes the request file and stops the run until ``rlthf annotate import`` brings
    every answer in."""

    name = "file_queue"

    def __init__(self, run_dir: str | Path | RunDir) -> None:
        self.run_dir = run_dir

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]:
        ids = _write_request(self.run_dir, iteration, requests, overwrite=False)
        answers = read_answers(self.run_dir, iteration)
        missing = sum(pid not in answers for pid in ids)
        if missing:
            raise AnnotationPending(iteration, request_path(self.run_dir, iteration), missing, _root(self.run_dir))
        return {pid: answers[pid] for pid in ids}


def import_answers(run_dir: str | Path | RunDir, answers_file: str | Path) -> tuple[int, int]:
    """Add people's answers to the open request of ``run_dir``.

    ``answers_file`` is jsonl of ``{"id", "label"}`` with an optional ``"annotator"``; labels are ``a``/``b`` in
    any case. It may answer part of the request. Every line is checked before anything is written, so a bad file
    changes nothing.

    Returns
    -------
    iteration : int
        The iteration whose request the answers went to.
    imported : int
        How many answers were added.

    Raises
    ------
    InvalidAnswer
        For the first bad line: malformed JSON, not an object, a missing or bad id or label, an id that is not in
        the open request, one repeated in the file, or one already answered.
    ValueError
        When no request is open (or, inconsistently, more than one).
    """
    iteration = _open_iteration(run_dir)
    requested = set(read_requested_ids(run_dir, iteration))
    existing = read_jsonl(answers_path(run_dir, iteration))
    answered = {r["id"] for r in existing}

    new: list[dict] = []
    line_of_id: dict[str, int] = {}
    lines = Path(answers_file).read_text(encoding="utf-8").split("\n")
    for line, text in enumerate(lines, 1):
        if not text.strip():
            continue
        pid, label, annotator = _parse_answer_line(answers_file, line, text)
        if pid not in requested:
            raise InvalidAnswer(answers_file, line, "id", f"{pid!r} is not in the open request "
                                f"({request_path(run_dir, iteration)})")
        if pid in line_of_id:
            raise InvalidAnswer(answers_file, line, "id", f"duplicate of line {line_of_id[pid]}")
        if pid in answered:
            raise InvalidAnswer(answers_file, line, "id", f"{pid!r} is already answered")
        line_of_id[pid] = line
        new.append(_answer(pid, label, annotator))

    atomic_write_jsonl(answers_path(run_dir, iteration), existing + new)
    return iteration, len(new)


def _write_request(run_dir: str | Path | RunDir, iteration: int, requests: pd.DataFrame, *,
                   overwrite: bool) -> list[str]:
    """Write the request file (only the columns people see) and return the requested ids in order."""
    path = request_path(run_dir, iteration)
    records = requests[list(REQUEST_COLUMNS)].to_dict("records")
    ids = [r["id"] for r in records]
    if path.exists() and not overwrite:
        on_disk = read_requested_ids(run_dir, iteration)
        if set(on_disk) != set(ids):
            # Answers already imported belong to the request on disk; replacing it would strand them.
            raise ValueError(f"{path} asks about other pairs than this run now requests for iteration {iteration} "
                             "(did the config change?); use a new output_dir or remove that folder")
        return ids
    atomic_write_jsonl(path, records)
    return ids


def _open_iteration(run_dir: str | Path | RunDir) -> int:
    """The iteration whose request still has unanswered pairs."""
    folder = _root(run_dir) / "annotations"
    iterations = sorted(int(d.name.removeprefix("iter_")) for d in folder.glob("iter_*")
                        if d.name.removeprefix("iter_").isdigit() and (d / "request.jsonl").exists())
    waiting = [k for k in iterations if set(read_requested_ids(run_dir, k)) - set(read_answers(run_dir, k))]
    if not waiting:
        raise ValueError(f"no annotation request is waiting for answers in {folder} (every request there is fully "
                         "answered, or none was written yet); nothing to import")
    if len(waiting) > 1:
        raise ValueError(f"more than one request is waiting for answers in {folder} (iterations {waiting}); "
                         "a run only ever waits on one, so this folder was changed by hand")
    return waiting[0]


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


def _root(run_dir: str | Path | RunDir) -> Path:
    return run_dir.root if isinstance(run_dir, RunDir) else Path(run_dir)


def _answer(pid: str, label: str, annotator: str) -> dict:
    return {"id": pid, "label": label, "annotator": annotator,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _other(label: str) -> str:
    return "b" if label == "a" else "a"
