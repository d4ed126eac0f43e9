"""`rlthf run --serve` through two batches in headless Chromium: the run serves the page itself and waits while a
person answers the eyes-off batch and the batch of iteration 1; it is SIGKILLed in the middle of the second
batch, started again with --serve, and finishes with human labels exactly equal to the answers given, none asked
twice."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd

from rlthf.rundir import read_jsonl
from tests.conftest import REPO
from tests.judge_servers import free_port
from tests.test_annotation_page import browser  # noqa: F401  (the headless Chromium fixture)

START_TIMEOUT_S = 600  # bounds a cold start: embedding 1000 texts on a busy 2-core machine took 4 minutes


def start_run(args: list[str], port: int, log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # a file, not a pipe: a chatty run never blocks on a full pipe
        return subprocess.Popen([sys.executable, "-m", "rlthf.cli", "run", *args, "--serve", "--port", str(port)],
                                cwd=REPO, env={**os.environ, "RLTHF_PROGRESS": "0"}, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_for_batch(proc: subprocess.Popen, port: int, iteration: int, log_path) -> dict:
    """The page's status once the run serves ``iteration``'s request."""
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
                status = json.loads(response.read())
            if status["iteration"] == iteration:
                return status
        except OSError:  # not serving yet (refused), or no request yet (404)
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"no batch {iteration} within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def wait_for_line(proc: subprocess.Popen, log_path, line: str) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while line not in log_path.read_text():
        assert proc.poll() is None and time.time() < deadline, f"no {line!r}:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.3)


class Person:
    """One annotator in the browser: answers what the page shows and remembers every answer."""

    def __init__(self, page, run_dir) -> None:
        self.page, self.run_dir = page, run_dir
        self.given: dict[int, dict[str, str]] = {0: {}, 1: {}}
        self.shown: list[str] = []  # every pair shown for an answer, in order

    def answer(self, iteration: int, how: str) -> None:
        page = self.page
        pid, shown = page.input_value("input[name=id]"), page.input_value("input[name=shown]")
        pair = {r["id"]: r for r in read_jsonl(self.run_dir / f"annotations/iter_{iteration}/request.jsonl")}[pid]
        left, right = (pair["response_a"], pair["response_b"])[::1 if shown == "ab" else -1]
        assert page.inner_text("#response-left").strip() == left.strip()
        assert page.inner_text("#response-right").strip() == right.strip()
        side = "left" if how in ("click-left", "key-a") else "right"
        with page.expect_navigation():  # the answer posts the form, and the next pair (or the end) loads
            if how.startswith("click"):
                page.click(f"#choose-{side}")
            else:
                page.keyboard.press(how[-1])
        self.shown.append(pid)
        self.given[iteration][pid] = "a" if (side == "left") == (shown == "ab") else "b"

    def progress(self) -> str:
        return self.page.inner_text("#progress")


def test_a_served_run_waits_for_its_person_survives_a_kill_and_uses_exactly_the_answers(
        browser, ray_local, tmp_path, hh_rlhf_path, embedding_cache):  # noqa: F811
    run_dir, log_path, port = tmp_path / "run", tmp_path / "run.log", free_port()
    address = ray_local.get_runtime_context().gcs_address  # the session's Ray: no cluster to start, none to orphan
    args = ["--config", str(REPO / "configs/demo.yaml"), "--set", f"output_dir={run_dir}",
            "--set", f"data.path={hh_rlhf_path}", "--set", "data.max_pairs=500",
            "--set", f"reward.cache_dir={embedding_cache}", "--set", "selection.iterations=1",
            "--set", "annotation.annotator=file_queue", "--set", "annotation.audit_fraction=0",
            "--set", f"ray.address={address}"]  # two batches: the eyes-off one, then iteration 1's
    proc = start_run(args, port, log_path)
    page = browser.new_page()
    person = Person(page, run_dir)
    try:
        assert wait_for_batch(proc, port, 0, log_path)["total"] == 5  # the eyes-off validation batch
        page.goto(f"http://127.0.0.1:{port}/?annotator=ann")
        for how in ("click-left", "key-b", "key-a", "click-right", "key-2"):
            person.answer(0, how)
        assert "This batch is complete" in page.inner_text("#finished")

        status = wait_for_batch(proc, port, 1, log_path)  # the same run, the same page: the next batch
        assert (status["done"], status["total"]) == (0, 4)
        page.goto(f"http://127.0.0.1:{port}/")
        person.answer(1, "click-left")
        person.answer(1, "key-b")
        assert person.progress() == "2 / 4"

        proc.kill()  # SIGKILL while it waits: only what is on disk survives
        assert proc.wait(timeout=30) == -9
        proc = start_run(args, port, log_path)
        assert wait_for_batch(proc, port, 1, log_path)["done"] == 2
        wait_for_line(proc, log_path, "batch 1 waits for 2 of 4 answers")  # the resumed run read the log
        person.answer(1, "key-a")  # the page from before the kill posts to the new server, and counts
        assert person.progress() == "3 / 4"
        person.answer(1, "click-right")
        assert "This batch is complete" in page.inner_text("#finished")
        assert proc.wait(timeout=START_TIMEOUT_S) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    said = log_path.read_text()
    assert f"annotation page at http://127.0.0.1:{port}/" in said and "development server" not in said
    assert "batch 1: 2 / 4 answers" in said and "batch 1: 4 / 4 answers" in said  # progress as answers came
    assert len(person.shown) == len(set(person.shown)) == 9  # nobody was shown a pair they had answered
    for k, expected in ((0, "iterations/iter_0/labels_validated.parquet"), (1, "iterations/iter_1/labels.parquet")):
        log = read_jsonl(run_dir / f"annotations/iter_{k}/answers.jsonl")
        assert sorted(r["id"] for r in log) == sorted(person.given[k])  # each answer once; no undo, no repeat
        labels = pd.read_parquet(run_dir / expected)
        human = labels[(labels["label_source"] == "human") & (labels["human_iteration"] == k)]
        assert dict(zip(human["id"], human["label"])) == person.given[k]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["human_labels"] == 9


def test_serve_refuses_a_simulated_run_an_open_host_without_token_and_a_taken_port(tmp_path, hh_rlhf_path, capsys,
                                                                                    monkeypatch):
    from rlthf.cli import main

    monkeypatch.delenv("RLTHF_ANNOTATE_TOKEN", raising=False)
    command = ["run", "--config", str(REPO / "configs/demo.yaml"), "--set", f"output_dir={tmp_path}",
               "--set", f"data.path={hh_rlhf_path}", "--serve"]
    assert main(command) == 2 and "needs file_queue" in capsys.readouterr().err
    command += ["--set", "annotation.annotator=file_queue"]
    assert main([*command, "--host", "0.0.0.0"]) == 2 and "give a --token" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert main([*command, "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot serve the annotation page" in capsys.readouterr().err
    assert not (tmp_path / "steps.json").exists()  # all refused before the run did anything
