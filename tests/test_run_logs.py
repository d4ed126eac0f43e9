"""The run log (rlthf/run/logs.py): on its own (tee, records, file descriptor 2, Ray's forwarded lines, restoring,
appending across starts, an exception's traceback), then one real small run whose console holds nothing of
Ray's while its run.log holds the table."""
from __future__ import annotations

import logging
import os
import re
import sys
import threading

import pytest

from rlthf.config import load_config
from rlthf.run.driver import run
from rlthf.run.logs import run_log
from rlthf.run.report import format_table
from tests.conftest import REPO

# What Ray prints on a console: its loggers' format, the C++ core worker's, a forwarded worker or raylet line.
RAY_CONSOLE_LINE = re.compile(r"\t(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+:\d+ -- |\] \w+\.cc:\d+:|pid=\d+\)|\(raylet\)")


def log_lines(run_dir) -> list[str]:
    return (run_dir / "run.log").read_text().splitlines()


def print_from_thread(name: str, text: str) -> None:
    thread = threading.Thread(target=print, args=(text,), name=name)
    thread.start()
    thread.join()


def test_printed_lines_reach_the_console_and_the_log(tmp_path, capfd):
    with run_log(tmp_path) as path:
        print("| iteration | label acc |")
        sys.stderr.write("\rembed:  50%|#####     |")  # a progress bar redrawing itself, then done
        sys.stderr.write("\rembed: 100%|##########|\n")
        sys.stdout.write("a line without its newline")
        redraw = threading.Thread(target=sys.stderr.write, args=("\rembed:  60%|######    |",))
        redraw.start()  # as tqdm's monitor thread redraws a bar, never to finish the line
        redraw.join()
    assert path == tmp_path / "run.log"
    out, err = capfd.readouterr()
    assert out == "| iteration | label acc |\na line without its newline"
    assert err.endswith("\rembed: 100%|##########|\n\rembed:  60%|######    |")
    lines = log_lines(tmp_path)
    assert lines[1:4] == ["| iteration | label acc |", "embed: 100%|##########|", "a line without its newline"]
    assert "finished after" in lines[4]


def test_records_reach_the_log_and_rays_stay_off_the_console(tmp_path, capfd):
    console = logging.StreamHandler(sys.stderr)  # as the CLI's basicConfig sets it up
    logging.getLogger().addHandler(console)
    try:
        with run_log(tmp_path):
            logging.getLogger("rlthf").warning("EYES-OFF VALIDATION FAILED")
            logging.getLogger("ray.data").warning("Progress bars disabled.")
            logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
    finally:
        logging.getLogger().removeHandler(console)
    err = capfd.readouterr().err
    assert err == "EYES-OFF VALIDATION FAILED\n"
    log = "\n".join(log_lines(tmp_path))
    for expected in ("WARNING rlthf: EYES-OFF VALIDATION FAILED", "WARNING ray.data: Progress bars disabled.",
                     "WARNING ray._private.authentication: Token authentication is enabled"):
        assert expected in log


def test_without_handlers_warnings_still_reach_the_console(tmp_path, capfd):
    root = logging.getLogger()
    pytest_handlers = root.handlers[:]
    root.handlers.clear()  # a script that never set logging up
    try:
        with run_log(tmp_path):
            logging.getLogger("rlthf").warning("ground truth: 8.0% of the human labels flipped")
            logging.getLogger("ray").warning("a Ray warning")
        assert root.handlers == []
    finally:
        root.handlers[:] = pytest_handlers
    assert capfd.readouterr().err == "ground truth: 8.0% of the human labels flipped\n"
    assert "WARNING ray: a Ray warning" in "\n".join(log_lines(tmp_path))


def test_c_output_and_rays_forwarded_lines_go_to_the_log_only(tmp_path, capfd):
    cpp_error = ("[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:2465: Actor with class name: "
                 "'MapWorker(MapBatches(Embedder))' has constructor arguments in the object store")
    with run_log(tmp_path):
        os.write(2, (cpp_error + "\n").encode())  # as Ray's C++ core worker writes its errors
        print_from_thread("ray_print_logs", "\x1b[36m(MapWorker(MapBatches(Embedder)) pid=7)\x1b[0m loading")
        print_from_thread("ray_listen_error_messages", "\x1b[33m(raylet)\x1b[0m A worker died")
        print_from_thread("rlthf-thread", "ours")
    out, err = capfd.readouterr()
    assert (out, err) == ("ours\n", "")
    assert log_lines(tmp_path)[1:5] == [cpp_error, "(MapWorker(MapBatches(Embedder)) pid=7) loading",
                                        "(raylet) A worker died", "ours"]


def test_everything_is_restored_on_exit(tmp_path, capfd):
    console = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(console)
    before = sys.stdout, sys.stderr, list(root.handlers), os.fstat(2).st_ino
    try:
        with pytest.raises(KeyError), run_log(tmp_path):
            raise KeyError("stop")
        assert (sys.stdout, sys.stderr, list(root.handlers), os.fstat(2).st_ino) == before
        assert console.stream is sys.stderr and console.filters == []
        print("printed later")
        os.write(2, b"written later\n")
        root.warning("logged later")
    finally:
        root.removeHandler(console)
    assert capfd.readouterr() == ("printed later\n", "written later\nlogged later\n")
    assert "later" not in (tmp_path / "run.log").read_text()


def test_a_stream_kept_past_the_run_writes_to_the_console_alone(tmp_path, capfd):
    with run_log(tmp_path):  # e.g. a library that makes its logging handler on first use, inside the run
        made_inside = logging.StreamHandler(sys.stderr)
    made_inside.emit(logging.makeLogRecord({"msg": "a library's warning after the run"}))
    assert capfd.readouterr().err == "a library's warning after the run\n"
    assert "after the run" not in (tmp_path / "run.log").read_text()


def test_starts_append_with_a_header_each_and_an_exception_leaves_its_traceback(tmp_path):
    with run_log(tmp_path):
        print("first start")

    def annotate_step():
        raise RuntimeError("the annotation server went away")

    with pytest.raises(RuntimeError), run_log(tmp_path):
        annotate_step()
    lines = log_lines(tmp_path)
    starts = [i for i, line in enumerate(lines) if " start: " in line]
    assert len(starts) == 2 and lines[starts[0]].startswith("=== ") and "(rlthf " in lines[starts[0]]
    assert lines[starts[0] + 1] == "first start" and "finished after" in lines[starts[0] + 2]
    assert "stopped after" in lines[starts[1] + 1] and "RuntimeError: the annotation server went away" in lines[
        starts[1] + 1]
    assert lines[starts[1] + 2] == "Traceback (most recent call last):"
    assert any("in annotate_step" in line for line in lines) and lines[-1] == (
        "RuntimeError: the annotation server went away")


def test_a_real_run_keeps_its_table_in_run_log_and_nothing_of_rays_on_the_console(
        ray_local, hh_rlhf_path, embedding_cache, tmp_path, capfd):
    config = load_config(REPO / "configs/demo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.path={hh_rlhf_path}", "data.max_pairs=200",
        f"reward.cache_dir={embedding_cache}", "selection.iterations=1"])

    def log_as_ray_does(row):  # inside the run: a record of Ray's must reach run.log and not the console
        logging.getLogger("ray.data").warning("Ray Data warning during iteration %d", row["iteration"])

    result = run(config, on_iteration=log_as_ray_does)
    out, err = capfd.readouterr()
    console = (out + err).splitlines()
    assert not [line for line in console if "ERROR" in line or RAY_CONSOLE_LINE.search(line)]
    assert not [line for line in console if "Ray Data warning" in line]
    log = (result.run_dir / "run.log").read_text()
    table = format_table(result.metrics)
    assert table in log and table in out
    assert "WARNING ray.data: Ray Data warning during iteration 1" in log
    assert log.splitlines()[-1].startswith("=== ") and "finished after" in log.splitlines()[-1]
