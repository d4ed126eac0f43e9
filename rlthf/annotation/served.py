"""``rlthf run --serve``: the run serves the annotation page itself and waits in place for its people.

Each batch is written as :class:`~rlthf.annotation.annotators.FileQueueAnnotator` writes it (the same request and
overlap files, the same rule for when it is complete), so a served run and one that stops with exit status 3
can take turns on the same run directory. While answers are missing, the run polls the append-only answer log
and shows done / total; as soon as the batch is complete it goes on. One page serves the whole run, always the
latest request. A run killed while it waits loses nothing: every answer was fsynced before the next pair
showed, and the run started again reads the log and waits for the rest only.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pandas as pd

from rlthf.annotation.annotators import AnnotationPending, FileQueueAnnotator
from rlthf.annotation.page import PageServer, check_exposure, create_app
from rlthf.annotation.store import answers_needed, missing_answers, run_root
from rlthf.rundir import RunDir


@dataclass(frozen=True)
class PageAddress:
    """Where the run serves its annotation page (``rlthf run --serve --host --port --token``)."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (tests)
    token: str | None = None  # required for any host but loopback
    lease_minutes: float = 15.0

    def __post_init__(self) -> None:
        check_exposure(self.host, self.token)


class ServedAnnotator:
    """Answers from people on the annotation page that this run serves (waitress, in a background thread).

    Parameters
    ----------
    run_dir : str, Path or RunDir
        The run directory.
    address : PageAddress
        Where to serve the page; it is bound at once, so a taken port fails before the run does any work.
    overlap, seed
        As for :class:`~rlthf.annotation.annotators.FileQueueAnnotator`.
    poll_seconds : float, default=1.0
        How often the answer log is read while the run waits.
    out : text stream, default=sys.stdout
        Where the page's address and the progress go.
    """

    name = "served"

    def __init__(self, run_dir: str | Path | RunDir, address: PageAddress, *, overlap: float = 0.0, seed: int = 0,
                 poll_seconds: float = 1.0, out: TextIO | None = None) -> None:
        self.queue = FileQueueAnnotator(run_dir, overlap=overlap, seed=seed)
        self.run_dir, self.poll_seconds, self.out = run_root(run_dir), poll_seconds, out or sys.stdout
        app = create_app(self.run_dir, token=address.token, lease_minutes=address.lease_minutes, run_waits=True)
        try:
            self.server = PageServer(app, host=address.host, port=address.port, token=address.token).start()
        except OSError as err:  # a taken port or an address not on this machine: say so, before any work
            raise ValueError(f"cannot serve the annotation page at {address.host}:{address.port}: {err} "
                             "(choose another --port or --host)") from None
        self._say(f"rlthf: annotation page at {self.server.url}  (it shows each batch as the run asks for it)")

    def annotate(self, requests: pd.DataFrame, iteration: int) -> dict[str, str]:
        try:
            return self.queue.annotate(requests, iteration)
        except AnnotationPending as pending:
            self._wait(pending)
        return self.queue.annotate(requests, iteration)  # complete now: the agreement report, then the labels

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> ServedAnnotator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait(self, pending: AnnotationPending) -> None:
        """Poll the answer log until the batch is complete, printing done / total whenever it changes. Ctrl-C
        stops the run as a file-queue run stops (exit status 3): start it again to go on waiting."""
        k = pending.iteration
        total = sum(answers_needed(self.run_dir, k).values())
        self._say(f"rlthf: batch {k} waits for {pending.missing} of {total} answers: open {self.server.url}")
        shown = None
        try:
            while True:
                missing = missing_answers(self.run_dir, k)
                if missing != shown:
                    self._say(f"rlthf: batch {k}: {total - missing} / {total} answers")
                    shown = missing
                if not missing:
                    return
                time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            raise AnnotationPending(k, pending.request_path, missing_answers(self.run_dir, k),
                                    self.run_dir) from None

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)
