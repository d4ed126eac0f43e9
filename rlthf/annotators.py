"""Who answers an iteration's annotation batch: a simulated human, or people through files and the annotation page.

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
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Protocol

import pandas as pd

from rlthf.config import budget_labels
from rlthf.data import LABELS, hash_unit
from rlthf.rundir import RunDir, append_jsonl_durable, atomic_write_json, atomic_write_jsonl, read_jsonl

REQUEST_COLUMNS = ("id", "prompt", "response_a", "response_b")
IMPORT_FORMATS = ("jsonl", "labelstudio", "argilla")
log = logging.getLogger("rlthf")


class AnnotationPending(Exception):
    """People still have to answer iteration ``iteration``'s request; the run stops here and resumes later."""

    def __init__(self, iteration: int, request_path: str | Path, missing: int, run_dir: str | Path) -> None:
        super().__init__(iteration, request_path, missing, run_dir)  # all in args: survives pickling
        self.iteration, self.request_path, self.missing, self.run_dir = iteration, Path(request_path), missing, run_dir

    def __str__(self) -> str:
        return (f"iteration {self.iteration}: {self.missing} answers missing for the pairs in {self.request_path}. "
                f"Answer them on the annotation page:\n"
                f"  rlthf annotate serve --run {self.run_dir}\n"
                f"or in a jsonl file of {{\"id\", \"label\": \"a\"|\"b\"}} lines (or Label Studio / Argilla: "
                f"rlthf annotate export --help), then run\n"
                f"  rlthf annotate import --run {self.run_dir} ANSWERS.jsonl\n"
                f"and resume the run once all are in (a partial file is fine):\n"
                f"  rlthf run --config CONFIG")


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


# --- the human-label budget ---------------------------------------------------------------------------------

def cap_to_budget(wanted: int, budget: int | str | None, *, corpus_size: int, used: int) -> int:
    """How many of ``wanted`` new human labels the budget still allows after ``used`` (never below 0)."""
    cap = budget_labels(budget, corpus_size)
    return wanted if cap is None else max(0, min(wanted, cap - used))


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
    """Answers from people: writes the request file and stops the run until every answer is in, through the
    annotation page (``rlthf annotate serve``) or an imported file (``rlthf annotate import``).

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    overlap : float, default=0.0
        Share of each batch that two different people answer, chosen by a seeded hash of the pair id; their
        agreement goes to ``annotations/iter_{k}/agreement.json``.
    seed : int, default=0
        Seeds which pairs overlap.
    """

    name = "file_queue"

    def __init__(self, run_dir: str | Path | RunDir, *, overlap: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= overlap <= 1.0:
            raise ValueError(f"overlap must be in [0, 1]; got {overlap}")
        self.run_dir, self.overlap, self.seed = run_dir, overlap, seed

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]:
        ids = requests["id"].tolist()
        path = overlap_path(self.run_dir, iteration)
        if not path.exists():  # written before the request, so a request on disk always has its overlap
            overlap = [pid for pid, u in zip(ids, hash_unit(self.seed, "overlap", ids)) if u < self.overlap]
            atomic_write_json(path, overlap)
        ids = _write_request(self.run_dir, iteration, requests, overwrite=False)
        missing = missing_answers(self.run_dir, iteration)
        if missing:
            raise AnnotationPending(iteration, request_path(self.run_dir, iteration), missing, _root(self.run_dir))
        report = iteration_agreement(self.run_dir, iteration)
        if report["pairs"]:
            atomic_write_json(iteration_dir(self.run_dir, iteration) / "agreement.json", report)
            log.info("iteration %d: two people agree on %.0f%% of %d overlap pairs (Cohen's kappa %s)", iteration,
                     100 * report["agree"], report["pairs"],
                     "n/a" if report["kappa"] is None else f"{report['kappa']:.2f}")
        answers = read_answers(self.run_dir, iteration)
        return {pid: answers[pid] for pid in ids}


def import_answers(run_dir: str | Path | RunDir, answers_file: str | Path,
                   format: Literal["jsonl", "labelstudio", "argilla"] = "jsonl") -> tuple[int, int]:
    """Add people's answers to the open request of ``run_dir``.

    ``format`` is ``jsonl``: lines of ``{"id", "label"}`` with an optional ``"annotator"``, labels ``a``/``b`` in
    any case; ``labelstudio``: Label Studio's JSON export of the tasks of ``rlthf annotate export``; ``argilla``:
    the folder (or its ``records.json``) of an Argilla dataset exported with ``Dataset.to_disk``
    (:mod:`rlthf.exchange`). The file may answer part of the request. Every record is checked before anything is
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
        from rlthf import exchange

        answers = (exchange.read_labelstudio_answers if format == "labelstudio"
                   else exchange.read_argilla_answers)(answers_file)
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
        new.append(_answer(pid, answer.label, answer.annotator, **answer.extra))
    return new


def read_jsonl_answers(path: str | Path) -> list[Answer]:
    """The answers of a jsonl file, each line parsed and its fields checked (not yet against a request)."""
    answers = []
    for line, text in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), 1):
        if text.strip():
            pid, label, annotator = _parse_answer_line(path, line, text)
            answers.append(Answer(line, "id", "id", pid, label, annotator))
    return answers


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


def open_iteration(run_dir: str | Path | RunDir) -> int:
    """The iteration whose request still waits for answers."""
    folder = _root(run_dir) / "annotations"
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
    folder = _root(run_dir) / "annotations"
    return sorted(int(d.name.removeprefix("iter_")) for d in folder.glob("iter_*")
                  if d.name.removeprefix("iter_").isdigit() and (d / "request.jsonl").exists())


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


def _answer(pid: str, label: str, annotator: str, **extra: Any) -> dict:
    return {"id": pid, "label": label, "annotator": annotator, "time": now(), **extra}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _other(label: str) -> str:
    return "b" if label == "a" else "a"
