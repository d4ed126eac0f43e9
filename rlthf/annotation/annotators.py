"""Who answers an iteration's annotation batch: a simulated human, or people through files and the annotation page
(the answers land in the store, :mod:`rlthf.annotation.store`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Protocol

import pandas as pd

from rlthf.core.labels import LABELS, flip_labels, hash_unit
from rlthf.rundir import RunDir, append_jsonl_durable, atomic_write_json
from rlthf.annotation.store import (answer_record, answers_path, iteration_agreement, iteration_dir, missing_answers,
                                    overlap_path, read_answers, request_path, run_root, write_request)

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
                f"  rlthf run --config CONFIG\n"
                f"or let the run serve the page itself and wait for the answers: rlthf run --config CONFIG --serve")


class Annotator(Protocol):
    """Answers an annotation batch.

    ``annotate`` gets the requested pairs (columns id, prompt, response_a, response_b) and returns
    ``{id: "a" | "b"}`` for every requested id, or raises :class:`AnnotationPending` when the answers will come
    later.
    """

    name: str

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]: ...


class LabelTable:
    """Pair ids and their labels as two Arrow arrays: a corpus's ground truth held without a Python object per
    pair (a dict of a million ids costs about 100 MB), of which a simulated human reads a few thousand."""

    def __init__(self, ids, labels) -> None:
        import pyarrow as pa

        self.ids, self.labels = pa.array(ids, pa.string()), pa.array(labels, pa.string())

    def labels_for(self, ids: list[str]) -> dict[str, str | None]:
        """The labels of those of ``ids`` in the table (a missing label is None)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        held = pc.is_in(self.ids, value_set=pa.array(ids, pa.string()))  # a hash of the few asked, not of all held
        return dict(zip(self.ids.filter(held).to_pylist(), self.labels.filter(held).to_pylist()))


class SimulatedHuman:
    """Answers from known labels, the way the paper simulates human annotators.

    Parameters
    ----------
    run_dir : str or Path
        The run directory; requests and answers go under ``annotations/iter_{k}/``.
    truth : Mapping[str, str] or LabelTable
        Pair id to the human label, ``"a"`` or ``"b"`` (a :class:`LabelTable` for a corpus of millions).
    error_rate : float, default=0.0
        Chance that an answer is flipped; decided per pair id by a seeded hash, so reruns flip the same pairs.
    seed : int, default=0
        Seeds which answers are wrong.
    """

    name = "simulated_human"

    def __init__(self, run_dir: str | Path | RunDir, truth: Mapping[str, str] | LabelTable, *, error_rate: float = 0.0,
                 seed: int = 0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1]; got {error_rate}")
        self.run_dir, self.truth, self.error_rate, self.seed = run_dir, truth, error_rate, seed
        self.questions_asked = 0
        self.asked_ids: list[str] = []

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]:
        ids = write_request(self.run_dir, iteration, requests, overwrite=True)
        answers_file = answers_path(self.run_dir, iteration)
        answers = read_answers(self.run_dir, iteration)  # a crashed attempt may have answered some already
        to_ask = [i for i in ids if i not in answers]
        truth = (self.truth.labels_for(to_ask) if isinstance(self.truth, LabelTable)
                 else {pid: self.truth[pid] for pid in to_ask if pid in self.truth})
        for pid in to_ask:  # check every label before answering any, so a bad truth writes nothing
            if pid not in truth:
                raise KeyError(pid)
            if truth[pid] not in LABELS:
                raise ValueError(f"pair {pid}: no human label to simulate (got {truth[pid]!r})")
        wrong = hash_unit(self.seed, "human", to_ask) < self.error_rate
        for pid, is_wrong in zip(to_ask, wrong):
            label = flip_labels([truth[pid]])[0] if is_wrong else truth[pid]
            append_jsonl_durable(answers_file, answer_record(pid, label, self.name))
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
        ids = write_request(self.run_dir, iteration, requests, overwrite=False)
        missing = missing_answers(self.run_dir, iteration)
        if missing:
            raise AnnotationPending(iteration, request_path(self.run_dir, iteration), missing, run_root(self.run_dir))
        report = iteration_agreement(self.run_dir, iteration)
        if report["pairs"]:
            atomic_write_json(iteration_dir(self.run_dir, iteration) / "agreement.json", report)
            log.info("iteration %d: two people agree on %.0f%% of %d overlap pairs (Cohen's kappa %s)", iteration,
                     100 * report["agree"], report["pairs"],
                     "n/a" if report["kappa"] is None else f"{report['kappa']:.2f}")
        answers = read_answers(self.run_dir, iteration)
        return {pid: answers[pid] for pid in ids}
