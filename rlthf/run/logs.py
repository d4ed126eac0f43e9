"""The run log: everything a run prints and logs, kept in ``<run dir>/run.log`` to be read afterwards.

Inside :func:`run_log` (one run at a time in a process):

- what Python writes to ``sys.stdout`` and ``sys.stderr`` reaches the console as before, and the log as well; a
  progress bar's redraws reach the log as their last state only;
- the lines Ray's driver threads forward from workers and the raylet (``(MapWorker(...) pid=...) ...``) go to the
  log only;
- what C code writes straight to file descriptor 2 goes to the log only: Ray's C++ core worker writes its errors
  there, e.g. the ``core_worker.cc`` line every Ray Data actor pool gets (ray-project/ray#57733);
- every logger's records reach the log through a handler on the root logger. The console handlers of the root
  logger leave out Ray's records (:func:`rlthf.cluster.session.init_ray` hands them to the root logger);
- an exception that ends the run is written to the log with its traceback before it propagates.

Each start appends a header line (time, command, rlthf version) and each end a closing line: a start without its
closing line was cut short (a killed process).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shlex
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator, TextIO

import rlthf

# The driver threads through which Ray prints what its workers and the raylet write (ray._private.worker).
RAY_FORWARDING_THREADS = frozenset({"ray_print_logs", "ray_listen_error_messages"})
TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RECORD_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def not_from_ray(record: logging.LogRecord) -> bool:
    """A logging filter: keeps the records of every logger but Ray's."""
    return record.name != "ray" and not record.name.startswith("ray.")


def final_state(line: str) -> str:
    """What a terminal shows of ``line`` at its end: the part after its last carriage return, uncoloured."""
    return TERMINAL_ESCAPE.sub("", line.rstrip("\r").rsplit("\r", 1)[-1])


class Tee(io.TextIOBase):
    """A text stream that writes to ``console`` and, whole lines at a time, to ``log`` (each thread's lines kept
    apart); what Ray's forwarding threads write goes to the log only."""

    def __init__(self, console: TextIO, log: TextIO) -> None:
        self.console = console
        self.log = log
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if self.log.closed:  # kept past the run (a logging handler made inside it): the console alone
            return self.console.write(text)
        thread = threading.current_thread()
        if thread.name not in RAY_FORWARDING_THREADS:
            self.console.write(text)
        with self._lock:
            *lines, self._partial[thread.ident] = (self._partial.get(thread.ident, "") + text).split("\n")
            for line in lines:
                self.log.write(final_state(line) + "\n")
        return len(text)

    def close_lines(self) -> None:
        """Write the lines that never got their newline, but not a progress bar's redraw left unfinished (tqdm's
        monitor thread redraws bars from a thread of its own)."""
        with self._lock:
            for partial in self._partial.values():
                if final_state(partial) and not partial.startswith("\r"):
                    self.log.write(final_state(partial) + "\n")
            self._partial.clear()

    def flush(self) -> None:
        self.console.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.console, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:
        return getattr(self.console, "errors", None)


def descriptor(stream) -> int | None:
    """The file descriptor ``stream`` writes to, or None (a capture in memory, a notebook's stream)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


@contextlib.contextmanager
def stderr_descriptor_to(log: TextIO) -> Iterator[TextIO]:
    """Point file descriptor 2 at ``log``; yields a stream on what it pointed at before (the console)."""
    sys.stderr.flush()
    console = open(os.dup(2), "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                   errors="backslashreplace", buffering=1)
    os.dup2(log.fileno(), 2)
    try:
        yield console
    finally:
        console.flush()
        os.dup2(console.fileno(), 2)
        console.close()


def console_handlers(root: logging.Logger) -> list[logging.StreamHandler]:
    """The root logger's handlers that print to the console (the CLI's, a notebook's)."""
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return [h for h in root.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and (any(h.stream is c for c in consoles) or descriptor(h.stream) in (1, 2))]


@contextlib.contextmanager
def records_to(log: TextIO, console: TextIO) -> Iterator[None]:
    """Every logger's records to ``log``; the root logger's console handlers print to ``console`` (file
    descriptor 2 points at the log meanwhile) and leave Ray's records out."""
    root = logging.getLogger()
    handlers = console_handlers(root)
    # Without handlers Python prints warnings through its last resort, which any handler turns off: stand in
    stand_in = None if root.handlers else logging.StreamHandler(console)
    if stand_in:
        stand_in.setLevel(logging.WARNING)
        handlers.append(stand_in)
        root.addHandler(stand_in)
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.addFilter(not_from_ray)
        if descriptor(handler.stream) == 2:
            handler.setStream(console)
    to_log = logging.StreamHandler(log)
    to_log.setFormatter(logging.Formatter(RECORD_FORMAT))
    root.addHandler(to_log)
    try:
        yield
    finally:
        root.removeHandler(to_log)
        for handler, stream in zip(handlers, streams):
            handler.removeFilter(not_from_ray)
            handler.setStream(stream)
        if stand_in:
            root.removeHandler(stand_in)


@contextlib.contextmanager
def console_copied_to(log: TextIO) -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` teed into ``log``, file descriptor 2 and logging records into it."""
    with stderr_descriptor_to(log) as console_stderr:
        saved = sys.stdout, sys.stderr
        stderr_console = console_stderr if descriptor(sys.stderr) == 2 else sys.stderr
        tees = Tee(sys.stdout, log), Tee(stderr_console, log)
        with records_to(log, stderr_console):
            sys.stdout, sys.stderr = tees
            try:
                yield
            finally:
                sys.stdout, sys.stderr = saved
                for tee in tees:
                    tee.flush()
                    tee.close_lines()


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def command_line() -> str:
    argv = sys.argv or ["python"]
    return shlex.join([Path(argv[0]).name, *argv[1:]])


@contextlib.contextmanager
def run_log(run_dir: str | Path) -> Iterator[Path]:
    """Keep everything printed and logged inside the ``with`` block in ``<run_dir>/run.log`` too (appended to
    across resumptions); yields the log's path."""
    path = Path(run_dir) / "run.log"
    # line buffered: each whole line reaches the file at once, so a killed run loses none
    with open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1) as log:
        log.write(f"=== {now()} start: {command_line()} "
                  f"(rlthf {rlthf.__version__}, pid {os.getpid()}) ===\n")
        started = time.monotonic()
        try:
            with console_copied_to(log):
                yield path
        except BaseException as exc:
            log.write(f"=== {now()} stopped after {time.monotonic() - started:.0f} s "
                      f"by {type(exc).__name__}: {exc} ===\n{traceback.format_exc()}")
            raise
        log.write(f"=== {now()} finished after {time.monotonic() - started:.0f} s ===\n")
