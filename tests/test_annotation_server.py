"""The annotation page on its real server (waitress on 127.0.0.1): several people answering at once, each in a
thread with their own name cookie, some double-clicking; no answer is lost, no pair accepted twice, no pair
leased to more people than it needs, and every answer is in the log exactly once."""
from __future__ import annotations

import io
import random
import re
import threading
import time
from collections import Counter, defaultdict
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
import requests

from rlthf.annotation.annotators import AnnotationPending, FileQueueAnnotator
from rlthf.annotation.page import NAME_COOKIE, PageServer, create_app
from rlthf.annotation.served import PageAddress, ServedAnnotator
from rlthf.annotation.store import answers_needed
from rlthf.rundir import read_jsonl

PEOPLE, PAIRS = 6, 40
TIMEOUT_S = 10  # one request; the whole session is bounded by the number of pairs and this


class Referee:
    """What the clients saw, checked as they see it: a pair shown to someone is held by them until they post
    about it, and is never shown while its holders and its accepted answers already reach what it needs."""

    def __init__(self, needed: dict[str, int]) -> None:
        self.needed, self.lock = needed, threading.Lock()
        self.held: dict[str, set[str]] = defaultdict(set)
        self.accepted: list[tuple[str, str, str, str]] = []  # pair id, annotator, label, shown
        self.faults: list[str] = []

    def shown(self, who: str, pid: str) -> None:
        with self.lock:
            self.held[pid].add(who)
            answers = sum(a[0] == pid for a in self.accepted)
            if len(self.held[pid]) + answers > self.needed[pid]:
                self.faults.append(f"{pid} shown to {who} while held by {sorted(self.held[pid])}, {answers} answered")

    def letting_go(self, who: str, pid: str) -> None:
        with self.lock:
            self.held[pid].discard(who)

    def took(self, who: str, pid: str, label: str, shown: str) -> None:
        with self.lock:
            self.accepted.append((pid, who, label, shown))

    def fault(self, text: str) -> None:
        with self.lock:
            self.faults.append(text)


def post(base: str, who: str, form: dict) -> str:
    """Post an answer as ``who``; returns the message the page redirects with ('' when it took it as given)."""
    response = requests.post(base + "answer", data=form, cookies={NAME_COOKIE: who}, allow_redirects=False,
                             timeout=TIMEOUT_S)
    assert response.status_code == 302, response.text
    return parse_qs(urlparse(response.headers["Location"]).query).get("message", [""])[0]


def annotate_until_done(base: str, who: str, referee: Referee, seed: int) -> None:
    rng, session = random.Random(seed), requests.Session()
    html = session.get(f"{base}?annotator={who}", timeout=TIMEOUT_S).text
    for _ in range(4 * PAIRS):  # bounded: each round answers or skips one pair
        found = re.search(r'name="id" value="([^"]+)"[\s\S]*name="shown" value="(ab|ba)"', html)
        if found is None:
            assert "Nothing left for you" in html or "This batch is complete" in html, html
            return
        pid, shown = found.groups()
        referee.shown(who, pid)
        choice = "skip" if rng.random() < 0.15 else rng.choice(["left", "right"])
        form = {"iteration": "1", "id": pid, "shown": shown, "choice": choice}
        referee.letting_go(who, pid)
        if choice != "skip" and rng.random() < 0.3:  # a double click: the same answer twice at once
            messages = []
            twin = threading.Thread(target=lambda: messages.append(post(base, who, form)))
            twin.start()
            messages.append(post(base, who, form))
            twin.join(TIMEOUT_S)
            if sorted(messages) != ["", "You had answered that pair already (a second click?); your first answer "
                                        "stands."]:
                referee.fault(f"{who}'s double click on {pid} came back as {messages}")
        else:
            message = post(base, who, form)
            if message:
                referee.fault(f"{who}'s answer to {pid}, a pair leased to them: {message}")
        if choice != "skip":
            referee.took(who, pid, shown[0] if choice == "left" else shown[1], shown)
        html = session.get(base, timeout=TIMEOUT_S).text
    referee.fault(f"{who} was still being shown pairs after {4 * PAIRS} rounds")


def some_pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"pair-{i:02d}" for i in range(n)], "prompt": "\n\nHuman: which?",
                         "response_a": [f"first {i}" for i in range(n)],
                         "response_b": [f"second {i}" for i in range(n)]})


def test_people_answering_at_once_lose_nothing_and_get_no_pair_twice(tmp_path):
    pairs = some_pairs(PAIRS)
    with pytest.raises(AnnotationPending):
        FileQueueAnnotator(tmp_path, overlap=0.3, seed=0).annotate(pairs, 1)
    needed = answers_needed(tmp_path, 1)
    assert 2 in needed.values() and 1 in needed.values()
    server = PageServer(create_app(tmp_path), host="127.0.0.1", port=0).start()
    referee = Referee(needed)
    try:
        people = [threading.Thread(target=annotate_until_done, args=(server.url, f"person{i}", referee, i),
                                   daemon=True) for i in range(PEOPLE)]
        for person in people:
            person.start()
        for person in people:
            person.join(timeout=90)
        assert not any(person.is_alive() for person in people), "a client hung"
        status = requests.get(server.url + "status", timeout=TIMEOUT_S).json()
    finally:
        server.close()

    assert referee.faults == []
    assert (status["done"], status["total"], status["complete"]) == (PAIRS, PAIRS, True)
    log = read_jsonl(tmp_path / "annotations/iter_1/answers.jsonl")
    logged = [(r["id"], r["annotator"], r["label"], r["shown"]) for r in log]
    assert Counter(logged) == Counter(referee.accepted)  # every accepted answer, each exactly once
    assert len(set(logged)) == len(logged) and not any(r.get("undo") for r in log)
    assert Counter(pid for pid, *_ in logged) == Counter(needed)  # each pair exactly as many times as it needs
    assert all(len({who for p, who, *_ in logged if p == pid}) == n for pid, n in needed.items())
    assert len({who for _, who, *_ in logged}) == PEOPLE  # everyone got work
    assert FileQueueAnnotator(tmp_path, overlap=0.3, seed=0).annotate(pairs, 1) == {
        pid: next(label for p, _, label, _ in logged if p == pid) for pid in needed}


def test_the_server_binds_loopback_by_default_and_refuses_the_network_without_a_token():
    assert PageAddress().host == "127.0.0.1"
    with pytest.raises(ValueError, match="give a --token"):
        PageAddress(host="0.0.0.0")
    assert PageAddress(host="0.0.0.0", token="s3cret").token == "s3cret"
    assert PageAddress(host="::1").host == "::1"


def test_the_served_annotator_waits_in_place_until_the_batch_is_complete(tmp_path):
    pairs, out, given, result = some_pairs(3), io.StringIO(), {}, {}
    with ServedAnnotator(tmp_path, PageAddress(port=0), poll_seconds=0.05, out=out) as annotator:
        waiting = threading.Thread(target=lambda: result.update(annotator.annotate(pairs, 1)), daemon=True)
        waiting.start()
        session = requests.Session()
        for _ in range(200):  # the request is written by the waiting thread
            response = session.get(f"{annotator.server.url}?annotator=ann", timeout=TIMEOUT_S)
            if response.status_code == 200:
                break
            time.sleep(0.05)
        html = response.text
        for label in "aba":
            assert waiting.is_alive() and not result  # it waits while any answer is missing
            pid, shown = re.search(r'name="id" value="([^"]+)"[\s\S]*name="shown" value="(ab|ba)"', html).groups()
            assert post(annotator.server.url, "ann", {"iteration": "1", "id": pid, "shown": shown,
                                                      "choice": "left" if shown[0] == label else "right"}) == ""
            given[pid] = label
            html = session.get(annotator.server.url, timeout=TIMEOUT_S).text
        waiting.join(timeout=TIMEOUT_S)
        assert not waiting.is_alive() and result == given
        with pytest.raises(ValueError, match="cannot serve the annotation page"):  # one page a port
            ServedAnnotator(tmp_path, PageAddress(port=annotator.server.port))
        assert annotator.annotate(pairs, 1) == given  # a resumed run with every answer in asks nothing
    said = out.getvalue()
    assert f"annotation page at {annotator.server.url}" in said
    assert "batch 1 waits for 3 of 3 answers" in said and "batch 1: 3 / 3 answers" in said
