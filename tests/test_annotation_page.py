"""The annotation page: in-process through Flask's test client (leases, skip, undo, overlap, token, escaping),
and in headless Chromium against a real `rlthf annotate serve` that is killed and restarted mid-batch, after
which the waiting run resumes with exactly the answers given."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from rlthf.annotation.page import create_app, serve
from rlthf.core.dialogue import dialogue_turns
from rlthf.annotation.annotators import AnnotationPending, FileQueueAnnotator
from rlthf.annotation.store import read_answer_records, read_answers
from rlthf.config import load_config
from rlthf.data import read_pairs
from rlthf.rundir import RunDir, read_jsonl
from rlthf.annotation.store import AUDIT_ITERATION
from tests.conftest import REPO
from tests.judge_servers import free_port

SCRIPT = '<script>document.title = "pwned"</script><b>bold?</b> & "quotes"'


@pytest.fixture(scope="module")
def hh_pairs(hh_rlhf_path):
    pairs, _ = read_pairs(hh_rlhf_path, seed=0, max_pairs=40)
    pairs = pairs.iloc[:6].reset_index(drop=True)
    pairs.loc[2, "response_a"] = SCRIPT + pairs.loc[2, "response_a"]  # dataset text that looks like markup
    return pairs


def open_batch(run, pairs, iteration=1, **kw):
    with pytest.raises(AnnotationPending):
        FileQueueAnnotator(run, **kw).annotate(pairs, iteration)


def shown_pair(html: str) -> tuple[str, str]:
    pid = re.search(r'name="id" value="([^"]+)"', html).group(1)
    shown = re.search(r'name="shown" value="(ab|ba)"', html).group(1)
    return pid, shown


def answer(client, html, choice, comment=""):
    pid, shown = shown_pair(html)
    iteration = re.search(r'name="iteration" value="(\d+)"', html).group(1)
    response = client.post("/answer", data={"iteration": iteration, "id": pid, "shown": shown, "choice": choice,
                                            "comment": comment}, follow_redirects=True)
    return pid, shown, response.get_data(as_text=True)


def test_dialogue_turns_of_a_real_prompt(hh_pairs):
    turns = dialogue_turns(hh_pairs.loc[0, "prompt"])
    assert turns[0] == ("Human", "what are some pranks with a pen i can do?")
    assert [speaker for speaker, _ in turns] == ["Human", "Assistant", "Human", "Assistant", "Human"]
    assert dialogue_turns("Summarize: x") == [("", "Summarize: x")]


def test_two_people_never_get_the_same_pair_and_every_answer_is_logged(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs)
    app = create_app(tmp_path, seed=0)
    ann, bob = app.test_client(), app.test_client()
    assert "Your name" in ann.get("/").get_data(as_text=True)
    page_a = ann.get("/?annotator=ann").get_data(as_text=True)
    page_b = bob.get("/?annotator=bob").get_data(as_text=True)
    assert shown_pair(page_a)[0] != shown_pair(page_b)[0]
    assert ann.get("/").get_data(as_text=True) == page_a  # the cookie remembers the name; the lease holds
    assert "0 / 6" in page_a

    pid, shown, page_a = answer(ann, page_a, "left", comment="  reads better ")
    records = read_answer_records(tmp_path, 1)[pid]
    assert [(r["annotator"], r["label"], r["shown"], r["comment"]) for r in records] == [
        ("ann", shown[0], shown, "reads better")]
    assert "1 / 6" in page_a
    # a second click on the same pair changes nothing
    again = ann.post("/answer", data={"iteration": "1", "id": pid, "shown": shown, "choice": "right"},
                     follow_redirects=True).get_data(as_text=True)
    assert "your first answer stands" in again and read_answers(tmp_path, 1)[pid] == shown[0]
    # bob's leased pair is never offered to ann
    seen = {pid}
    while "name=\"id\"" in page_a:
        current, _ = shown_pair(page_a)
        assert current != shown_pair(page_b)[0]
        seen.add(current)
        _, _, page_a = answer(ann, page_a, "right")
    assert seen == set(hh_pairs["id"]) - {shown_pair(page_b)[0]} and "Nothing left for you" in page_a
    _, _, page_b = answer(bob, page_b, "left")
    assert "This batch is complete" in page_b
    assert FileQueueAnnotator(tmp_path).annotate(hh_pairs, 1) == read_answers(tmp_path, 1)
    status = json.loads(bob.get("/status").get_data(as_text=True))
    assert (status["done"], status["total"], status["complete"]) == (6, 6, True)


def test_skip_comes_back_last_and_undo_takes_back_the_last_answer(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs)
    client = create_app(tmp_path, seed=1).test_client()
    page = client.get("/?annotator=ann").get_data(as_text=True)
    skipped, _, page = answer(client, page, "skip")
    order = []
    while True:
        pid, shown = shown_pair(page)
        order.append(pid)
        if pid == skipped:
            break
        _, _, page = answer(client, page, "left")
    assert order[-1] == skipped and len(order) == 6  # the skipped pair comes after all the others
    last = order[-2]
    page = client.post("/undo", follow_redirects=True).get_data(as_text=True)
    assert "undone" in page and shown_pair(page)[0] == last and last not in read_answers(tmp_path, 1)
    log = read_jsonl(tmp_path / "annotations/iter_1/answers.jsonl")
    assert log[-1]["undo"] is True and log[-1]["id"] == last and log[-1]["annotator"] == "ann"
    pid, shown, page = answer(client, page, "right")  # answered again, the other way
    assert pid == last and read_answers(tmp_path, 1)[last] == shown[1]


def test_overlap_pair_goes_to_two_people_and_no_third(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs.iloc[:1], overlap=1.0)
    app = create_app(tmp_path, seed=0)
    pages = [app.test_client() for _ in range(3)]
    html = [c.get(f"/?annotator=p{i}").get_data(as_text=True) for i, c in enumerate(pages)]
    assert 'name="id"' in html[0] and 'name="id"' in html[1] and "Nothing left for you" in html[2]
    answer(pages[0], html[0], "left")
    answer(pages[1], html[1], "left")
    assert len(read_answer_records(tmp_path, 1)[hh_pairs.loc[0, "id"]]) == 2


def test_dataset_text_is_escaped_and_no_label_is_on_the_page(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs.iloc[2:3])
    html = create_app(tmp_path).test_client().get("/?annotator=ann").get_data(as_text=True)
    assert "&lt;script&gt;document.title = &#34;pwned&#34;&lt;/script&gt;&lt;b&gt;bold?&lt;/b&gt; &amp;" in html
    assert "<b>bold?" not in html and "pwned\"</script>" not in html
    assert not re.search(r"\blabel\b|human_label|ai_label", html)


def test_pairs_outside_the_batch_are_refused(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs.iloc[:2])
    client = create_app(tmp_path).test_client()
    client.get("/?annotator=ann")
    page = client.post("/answer", data={"iteration": "1", "id": hh_pairs.loc[4, "id"], "shown": "ab",
                                        "choice": "left"}, follow_redirects=True).get_data(as_text=True)
    assert "another batch" in page and read_answers(tmp_path, 1) == {}
    assert client.post("/answer", data={"iteration": "1", "id": hh_pairs.loc[0, "id"], "shown": "xx",
                                        "choice": "left"}).status_code == 400


def test_token_is_required_when_set(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs)
    client = create_app(tmp_path, token="s3cret").test_client()
    assert client.get("/?annotator=ann").status_code == 403
    assert client.get("/?annotator=ann&token=wrong").status_code == 403
    assert client.get("/?annotator=ann&token=s3cret").status_code == 200
    assert client.get("/").status_code == 200  # the cookie carries it from now on
    with pytest.raises(ValueError, match="needs a --token|give a --token"):
        serve(tmp_path, host="0.0.0.0", port=free_port())


def test_undo_is_refused_once_the_run_recorded_the_step_that_read_the_answers(tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs.iloc[:2])
    client = create_app(tmp_path, seed=0).test_client()
    pid, _, _ = answer(client, client.get("/?annotator=ann").get_data(as_text=True), "left")
    RunDir(tmp_path).mark_done("iter_1/select")  # another step of the iteration: the answers are still open
    RunDir(tmp_path).mark_done("iter_0/validate")
    page = client.post("/undo", follow_redirects=True).get_data(as_text=True)
    assert "undone" in page and pid not in read_answers(tmp_path, 1)
    answer(client, page, "left")
    RunDir(tmp_path).mark_done("iter_1/annotate")
    page = client.post("/undo", follow_redirects=True).get_data(as_text=True)
    assert "already taken this batch" in page and pid in read_answers(tmp_path, 1)

    open_batch(tmp_path, hh_pairs.iloc[2:3], iteration=AUDIT_ITERATION)  # the audit at the end of the run
    pid, _, _ = answer(client, client.get("/").get_data(as_text=True), "left")
    RunDir(tmp_path).mark_done("final/audit")
    assert "already taken" in client.post("/undo", follow_redirects=True).get_data(as_text=True)
    assert pid in read_answers(tmp_path, AUDIT_ITERATION)


def test_before_the_first_request_the_page_says_the_run_prepares_it(tmp_path, hh_pairs):
    response = create_app(tmp_path).test_client().get("/?annotator=ann")
    assert response.status_code == 404 and "start the run" in response.get_data(as_text=True)
    served = create_app(tmp_path, run_waits=True).test_client()
    html = served.get("/?annotator=ann").get_data(as_text=True)
    assert "preparing its first batch" in html and 'http-equiv="refresh"' in html
    open_batch(tmp_path, hh_pairs.iloc[:1])
    page = served.get("/").get_data(as_text=True)  # the same page serves the request as soon as it is there
    _, _, page = answer(served, page, "left")
    assert "This batch is complete" in page and "next batch shows here" in page and 'http-equiv="refresh"' in page


# the real server in a browser

def start_server(run_dir, port) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rlthf.cli", "annotate", "serve", "--run", str(run_dir),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the annotation server did not start within 60 s")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is missing at /usr/bin/chromium: run the tests with scripts/test, which "
                    "installs it")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


def test_browser_escapes_script_as_text(browser, tmp_path, hh_pairs):
    open_batch(tmp_path, hh_pairs.iloc[2:3])
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/?annotator=ann")
        shown = page.input_value("input[name=shown]")
        side = "#response-left" if shown == "ab" else "#response-right"
        assert page.inner_text(side).startswith(SCRIPT)  # shown as the characters it is made of
        assert page.locator(f"{side} b").count() == 0 and page.title() != "pwned"
    finally:
        server.kill()
        server.wait()
    said = server.stdout.read().decode()
    assert "annotation page" in said and "development server" not in said  # waitress, not Flask's own server


def test_browser_batch_survives_a_server_kill_and_the_run_resumes(browser, ray_local, tmp_path, hh_rlhf_path,
                                                                    embedding_cache):
    from rlthf.run.driver import run

    config = load_config(REPO / "configs/demo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.path={hh_rlhf_path}", "data.max_pairs=500",
        f"reward.cache_dir={embedding_cache}", "selection.iterations=0", "annotation.annotator=file_queue",
        "annotation.audit_fraction=0"])  # one batch: the eyes-off validation
    with pytest.raises(AnnotationPending) as pending:  # the eyes-off validation waits for people
        run(config, echo=lambda _: None)
    assert pending.value.iteration == 0
    request = {r["id"]: r for r in read_jsonl(pending.value.request_path)}
    assert len(request) == 5

    port = free_port()
    server = start_server(tmp_path / "run", port)
    page = browser.new_page()
    given: dict[str, str] = {}

    def answer_current(how: str) -> None:
        pid, shown = page.input_value("input[name=id]"), page.input_value("input[name=shown]")
        left, right = (request[pid]["response_a"], request[pid]["response_b"])[::1 if shown == "ab" else -1]
        assert page.inner_text("#response-left").strip() == left.strip()
        assert page.inner_text("#response-right").strip() == right.strip()
        side = {"click-left": "left", "key-a": "left", "key-b": "right", "click-right": "right"}[how]
        with page.expect_navigation():  # each answer posts the form, and the next pair loads
            if how.startswith("click"):
                page.click(f"#choose-{side}")
            else:
                page.keyboard.press(how[-1])
        # the label follows what was on the side chosen, whatever the order
        given[pid] = "a" if (side == "left") == (shown == "ab") else "b"

    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#annotator", "ann")
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert page.inner_text("#progress") == "0 / 5"
        page.fill("#comment", "the first one")
        answer_current("click-left")
        answer_current("key-b")
        assert page.inner_text("#progress") == "2 / 5"

        server.send_signal(signal.SIGKILL)  # no cleanup: only what is on disk survives
        server.wait()
        server = start_server(tmp_path / "run", port)
        page.reload()
        assert page.inner_text("#progress") == "2 / 5"
        skipped = page.input_value("input[name=id]")
        with page.expect_navigation():
            page.keyboard.press("s")
        assert page.input_value("input[name=id]") != skipped
        answer_current("key-a")
        undone = page.input_value("input[name=id]")
        answer_current("click-right")
        with page.expect_navigation():
            page.keyboard.press("u")  # take the last answer back and give the other one
        assert page.input_value("input[name=id]") == undone
        del given[undone]
        answer_current("key-a")
        answer_current("click-right")  # the skipped pair comes back last
        assert skipped in given and len(given) == 5
        assert "This batch is complete" in page.inner_text("#finished")
        page.screenshot(path=str(tmp_path / "page.png"))
    finally:
        server.kill()
        server.wait()

    log = read_jsonl(tmp_path / "run/annotations/iter_0/answers.jsonl")
    assert sum(bool(r.get("undo")) for r in log) == 1 and len(log) == 7
    assert all(r["annotator"] == "ann" and r["time"] for r in log)
    assert log[0]["comment"] == "the first one"
    result = run(config, echo=lambda _: None)  # the run resumes with exactly those answers
    labels = pd.read_parquet(tmp_path / "run/iterations/iter_0/labels_validated.parquet").set_index("id")
    human = labels[labels["label_source"] == "human"]["label"]
    assert human.to_dict() == given
    assert result.metrics[0]["human_labels"] == 5
