"""The annotation store: each iteration's request and its append-only answer log in the run directory.

Each iteration ``k`` has a folder in the run directory::

    annotations/iter_{k}/request.jsonl   one line per pair to judge: id, prompt, response_a, response_b
    annotations/iter_{k}/overlap.json    the ids that two different people answer (inter-annotator agreement)
    annotations/iter_{k}/answers.jsonl   the answer log, append-only: {"id", "label": "a"|"b", "annotator", "time"}
                                         plus "shown" ("ab": a on the left) and "comment" from the page, and
                                         {"id", "undo": true, "annotator", "time"} that takes back that person's
                                         last answer for the pair

The request never carries the AI or working label, so it cannot bias whoever answers. An answer is on disk
before the next question is asked, so a run killed mid-batch resumes without asking anyone twice. The loop reads
the folded log (:func:`fold_answers`): a pair's label is its first answer still standing; a second answer to an
overlap pair only measures agreement.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import pandas as pd

from rlthf.core.labels import LABELS, PAIR_TEXT
from rlthf.rundir import RunDir, atomic_write_jsonl, read_jsonl

REQUEST_COLUMNS = PAIR_TEXT
# The order a person saw a pair in, kept with the answer: "ab" put response_a on the left.
SHOWN_ORDERS = ("ab", "ba")
# annotations/iter_1000 holds the audit's request and answers (the run's last batch), apart from the iterations'
AUDIT_ITERATION = 1000


class InvalidAnswer(ValueError):
    """A bad record in an answers file: the file, its 1-based position, the field and why.

    The position is a line of a jsonl file (``unit="line"``) or an element of a JSON list (``unit="record"``:
    a Label Studio task, an Argilla record).
    """

    def __init__(self, path: str | Path, line: int, field: str, reason: str, unit: str = "line") -> None:
        super().__init__(path, line, field, reason, unit)
        self.path, self.line, self.field, self.reason, self.unit = Path(path), line, field, reason, unit

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}: {self.unit} {self.line}"
        return f"{where}: field '{self.field}': {self.reason}"


@dataclass
class Answer:
    """One answer read from a file, before it is checked against the open request."""

    position: int  # 1-based line or record of the file, for error messages
    field: str  # the field that carries the answer, for error messages
    id_field: str  # the field that carries the pair id, for error messages
    id: str
    label: Literal["a", "b"]
    annotator: str
    extra: dict = field(default_factory=dict)  # shown, comment, time: kept in the log as they came


def iteration_dir(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return run_root(run_dir) / "annotations" / f"iter_{iteration}"


def request_path(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return iteration_dir(run_dir, iteration) / "request.jsonl"


def answers_path(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return iteration_dir(run_dir, iteration) / "answers.jsonl"


def read_requested_ids(run_dir: str | Path | RunDir, iteration: int) -> list[str]:
    return [r["id"] for r in read_jsonl(request_path(run_dir, iteration))]


def overlap_path(run_dir: str | Path | RunDir, iteration: int) -> Path:
    return iteration_dir(run_dir, iteration) / "overlap.json"


def fold_answers(log_records: list[dict]) -> dict[str, list[dict]]:
    """The answers still standing after the undos of an answer log: ``{id: [answer, ...]}`` in the order given.

    An undo record takes back the last standing answer of its annotator for its pair; one with nothing to take
    back changes nothing (a double click on undo).
    """
    standing: dict[str, list[dict]] = {}
    for record in log_records:
        answers = standing.setdefault(record["id"], [])
        if record.get("undo"):
            mine = [i for i, a in enumerate(answers) if a["annotator"] == record["annotator"]]
            if mine:
                answers.pop(mine[-1])
        else:
            answers.append(record)
    return {pid: answers for pid, answers in standing.items() if answers}


def read_answer_records(run_dir: str | Path | RunDir, iteration: int) -> dict[str, list[dict]]:
    """Every standing answer of ``iteration`` with who gave it and when, ``{id: [answer, ...]}``."""
    return fold_answers(read_jsonl(answers_path(run_dir, iteration)))


def read_answers(run_dir: str | Path | RunDir, iteration: int) -> dict[str, str]:
    """The labels given so far in ``iteration``: ``{id: "a" | "b"}``, each pair's first standing answer."""
    return {pid: answers[0]["label"] for pid, answers in read_answer_records(run_dir, iteration).items()}


def answers_needed(run_dir: str | Path | RunDir, iteration: int) -> dict[str, int]:
    """How many people answer each requested pair: 2 for the overlap pairs, 1 for the others."""
    path = overlap_path(run_dir, iteration)
    overlap = set(json.loads(path.read_text())) if path.exists() else set()
    return {pid: 2 if pid in overlap else 1 for pid in read_requested_ids(run_dir, iteration)}


def missing_answers(run_dir: str | Path | RunDir, iteration: int) -> int:
    """Answers the request of ``iteration`` still waits for (an overlap pair waits for two)."""
    standing = read_answer_records(run_dir, iteration)
    return sum(max(0, n - len(standing.get(pid, []))) for pid, n in answers_needed(run_dir, iteration).items())


def agreement(first: list[str], second: list[str]) -> dict:
    """Inter-annotator agreement of two people's labels on the same pairs.

    Returns ``pairs``, ``agree`` (the fraction of equal labels, None without pairs) and Cohen's ``kappa``
    (agreement beyond what the two people's label frequencies give by chance; None when chance agreement is 1).
    """
    n = len(first)
    if n != len(second):
        raise ValueError(f"two lists of labels of different lengths: {n} and {len(second)}")
    if not n:
        return {"pairs": 0, "agree": None, "kappa": None}
    observed = sum(x == y for x, y in zip(first, second)) / n
    chance = sum((first.count(label) / n) * (second.count(label) / n) for label in LABELS)
    kappa = None if chance == 1 else (observed - chance) / (1 - chance)
    return {"pairs": n, "agree": observed, "kappa": kappa}


def iteration_agreement(run_dir: str | Path | RunDir, iteration: int) -> dict:
    """Agreement between the first two answers of every pair that two people answered in ``iteration``."""
    doubles = [answers for answers in read_answer_records(run_dir, iteration).values() if len(answers) >= 2]
    return agreement([a[0]["label"] for a in doubles], [a[1]["label"] for a in doubles])


@contextlib.contextmanager
def locked(run_dir: str | Path | RunDir, iteration: int) -> Iterator[None]:
    """Hold the iteration's answer-log lock: the page's appends and an import's rewrite never interleave, even
    from two processes."""
    path = iteration_dir(run_dir, iteration) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_request(run_dir: str | Path | RunDir, iteration: int, requests: pd.DataFrame, *,
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


def open_iteration(run_dir: str | Path | RunDir) -> int:
    """The iteration whose request still waits for answers."""
    folder = run_root(run_dir) / "annotations"
    waiting = [k for k in requested_iterations(run_dir) if missing_answers(run_dir, k)]
    if not waiting:
        raise ValueError(f"no annotation request is waiting for answers in {folder} (every request there is fully "
                         "answered, or none was written yet); nothing to import")
    if len(waiting) > 1:
        raise ValueError(f"more than one request is waiting for answers in {folder} (iterations {waiting}); "
                         "a run only ever waits on one, so this folder was changed by hand")
    return waiting[0]


def requested_iterations(run_dir: str | Path | RunDir) -> list[int]:
    """The iterations that have a request, in order."""
    folder = run_root(run_dir) / "annotations"
    return sorted(int(d.name.removeprefix("iter_")) for d in folder.glob("iter_*")
                  if d.name.removeprefix("iter_").isdigit() and (d / "request.jsonl").exists())


def run_root(run_dir: str | Path | RunDir) -> Path:
    return run_dir.root if isinstance(run_dir, RunDir) else Path(run_dir)


def answer_record(pid: str, label: str, annotator: str, **extra: Any) -> dict:
    return {"id": pid, "label": label, "annotator": annotator, "time": now(), **extra}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
