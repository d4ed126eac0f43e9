"""Annotators: the simulated human resumes without asking twice; people's answers come in through checked files."""
from __future__ import annotations

import json
import pickle
import re
from datetime import datetime, timezone

import pandas as pd
import pytest

from rlthf.annotation.annotators import AnnotationPending, FileQueueAnnotator, LabelTable, SimulatedHuman
from rlthf.annotation.store import InvalidAnswer, answers_path, read_answers, request_path
from rlthf.annotation.importing import import_answers
from rlthf.core.labels import hash_unit
from rlthf.rundir import RunDir, read_jsonl

IDS = [f"pair{i:02d}" for i in range(6)]
TRUTH = {pid: "ab"[i % 2] for i, pid in enumerate(IDS)}


def make_requests(ids=IDS) -> pd.DataFrame:
    # Extra columns, as the driver's frame has them; none of them may reach the request file.
    return pd.DataFrame({"id": ids, "prompt": [f"prompt {i}" for i in ids], "response_a": [f"A {i}" for i in ids],
                         "response_b": [f"B {i}" for i in ids], "label": "a", "label_source": "ai",
                         "human_label": [TRUTH.get(i) for i in ids]})


def write_answers(path, lines: list) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


# SimulatedHuman

def test_simulated_human_answers_truth_and_writes_files(tmp_path):
    human = SimulatedHuman(tmp_path, TRUTH)
    assert human.name == "simulated_human"
    assert human.annotate(make_requests(), iteration=1) == TRUTH
    assert (human.questions_asked, human.asked_ids) == (6, IDS)
    requests = read_jsonl(request_path(tmp_path, 1))
    assert [set(r) for r in requests] == [{"id", "prompt", "response_a", "response_b"}] * 6  # no label of any kind
    assert [r["id"] for r in requests] == IDS
    answers = read_jsonl(tmp_path / "annotations/iter_1/answers.jsonl")
    assert {a["id"]: a["label"] for a in answers} == TRUTH
    assert {a["annotator"] for a in answers} == {"simulated_human"}
    assert all(datetime.fromisoformat(a["time"]).utcoffset() == timezone.utc.utcoffset(None) for a in answers)


def test_simulated_human_error_rate_flips_the_hashed_ids(tmp_path):
    ids = [f"p{i}" for i in range(120)]
    truth = {pid: "a" for pid in ids}
    answers = SimulatedHuman(tmp_path, truth, error_rate=0.3, seed=4).annotate(make_requests(ids), iteration=2)
    expected_flips = {pid for pid, u in zip(ids, hash_unit(4, "human", ids)) if u < 0.3}
    assert 20 < len(expected_flips) < 55
    assert {pid for pid, label in answers.items() if label == "b"} == expected_flips
    again = SimulatedHuman(tmp_path / "other_run", truth, error_rate=0.3, seed=4)
    assert again.annotate(make_requests(ids), iteration=2) == answers  # deterministic across runs


def test_a_label_table_answers_as_the_dict_does_and_refuses_the_same_pairs(tmp_path):
    ids = [f"p{i}" for i in range(120)]
    truth = {pid: "ab"[int(u < 0.5)] for pid, u in zip(ids, hash_unit(1, "t", ids))}
    table = LabelTable(list(truth), list(truth.values()))
    answers = SimulatedHuman(tmp_path / "table", table, error_rate=0.3, seed=4).annotate(make_requests(ids), 2)
    assert answers == SimulatedHuman(tmp_path / "dict", truth, error_rate=0.3, seed=4).annotate(make_requests(ids), 2)
    assert table.labels_for(["p3", "nope", "p1"]) == {"p3": truth["p3"], "p1": truth["p1"]}
    with pytest.raises(KeyError, match="nope"):
        SimulatedHuman(tmp_path / "missing", table).annotate(make_requests(["p1", "nope"]), 1)
    with pytest.raises(ValueError, match="pair p1: no human label"):
        SimulatedHuman(tmp_path / "none", LabelTable(["p1"], [None])).annotate(make_requests(["p1"]), 1)
    assert not (tmp_path / "none/annotations/iter_1/answers.jsonl").exists()  # a bad truth writes nothing


def test_second_simulated_human_asks_nothing_again(tmp_path):
    first = SimulatedHuman(tmp_path, TRUTH, error_rate=0.4, seed=1).annotate(make_requests(), iteration=1)
    second = SimulatedHuman(tmp_path, TRUTH, error_rate=0.4, seed=1)
    assert second.annotate(make_requests(), iteration=1) == first
    assert (second.questions_asked, second.asked_ids) == (0, [])
    assert len(read_jsonl(answers_path(tmp_path, 1))) == 6


def test_simulated_human_reuses_answers_of_a_crashed_attempt(tmp_path):
    # The crashed attempt answered two pairs (against the truth, to tell reuse from re-asking) and died
    # mid-append, leaving a torn line.
    path = answers_path(tmp_path, 3)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"id": IDS[0], "label": "b", "annotator": "simulated_human", "time": "t"}) + "\n"
                    + json.dumps({"id": IDS[1], "label": "a", "annotator": "simulated_human", "time": "t"}) + "\n"
                    + '{"id": "pair02", "la')
    human = SimulatedHuman(RunDir(tmp_path), TRUTH)
    answers = human.annotate(make_requests(), iteration=3)
    assert human.asked_ids == IDS[2:]
    assert answers == {**TRUTH, IDS[0]: "b", IDS[1]: "a"}
    assert read_answers(tmp_path, 3) == answers  # the torn line is gone, the file reads cleanly


def test_simulated_human_missing_truth_writes_no_answer(tmp_path):
    truth = {pid: label for pid, label in TRUTH.items() if pid != IDS[3]}
    with pytest.raises(KeyError, match=IDS[3]):
        SimulatedHuman(tmp_path, truth).annotate(make_requests(), iteration=1)
    assert not answers_path(tmp_path, 1).exists()


# FileQueueAnnotator and import_answers

def test_file_queue_round_trip_with_partial_import(tmp_path):
    queue = FileQueueAnnotator(tmp_path)
    assert queue.name == "file_queue"
    with pytest.raises(AnnotationPending) as pending:
        queue.annotate(make_requests(), iteration=1)
    assert (pending.value.iteration, pending.value.missing) == (1, 6)
    assert pending.value.request_path == request_path(tmp_path, 1)
    message = str(pending.value)
    assert str(request_path(tmp_path, 1)) in message and "6 answers missing" in message
    assert f"rlthf annotate import --run {tmp_path} ANSWERS.jsonl" in message
    assert f"rlthf annotate serve --run {tmp_path}" in message
    assert "rlthf run --config CONFIG" in message
    assert [set(r) for r in read_jsonl(request_path(tmp_path, 1))] == [{"id", "prompt", "response_a",
                                                                          "response_b"}] * 6

    write_answers(tmp_path / "part1.jsonl", [{"id": IDS[0], "label": "A"}, "",
                                             {"id": IDS[1], "label": " b ", "annotator": "alice"},
                                             {"id": IDS[2], "label": "a"}])
    assert import_answers(tmp_path, tmp_path / "part1.jsonl") == (1, 3)
    with pytest.raises(AnnotationPending) as pending:
        queue.annotate(make_requests(), iteration=1)
    assert pending.value.missing == 3

    write_answers(tmp_path / "part2.jsonl", [{"id": pid, "label": TRUTH[pid]} for pid in IDS[3:]])
    assert import_answers(tmp_path, tmp_path / "part2.jsonl") == (1, 3)
    assert queue.annotate(make_requests(), iteration=1) == {**TRUTH, IDS[0]: "a", IDS[1]: "b", IDS[2]: "a"}
    stored = read_jsonl(answers_path(tmp_path, 1))
    assert [a["annotator"] for a in stored] == ["file_import", "alice"] + ["file_import"] * 4
    assert all(datetime.fromisoformat(a["time"]).tzinfo is not None for a in stored)


def test_file_queue_refuses_a_changed_request(tmp_path):
    with pytest.raises(AnnotationPending):
        FileQueueAnnotator(tmp_path).annotate(make_requests(), iteration=1)
    with pytest.raises(ValueError, match="other pairs"):
        FileQueueAnnotator(tmp_path).annotate(make_requests(IDS[:4]), iteration=1)


BAD_ANSWERS = [
    ("malformed json", '{"id": "pair01", "label": ', "json"),
    ("not an object", '["pair01", "a"]', "json"),
    ("missing id", {"label": "a"}, "id"),
    ("id not a string", {"id": 5, "label": "a"}, "id"),
    ("missing label", {"id": IDS[1]}, "label"),
    ("bad label", {"id": IDS[1], "label": "c"}, "label"),
    ("label not a string", {"id": IDS[1], "label": 1}, "label"),
    ("annotator not a string", {"id": IDS[1], "label": "a", "annotator": 7}, "annotator"),
    ("unknown id", {"id": "nope", "label": "a"}, "id"),
    ("duplicate in file", {"id": IDS[2], "label": "b"}, "id"),
    ("already answered", {"id": IDS[0], "label": "a"}, "id"),
]


@pytest.mark.parametrize("bad, field", [case[1:] for case in BAD_ANSWERS], ids=[case[0] for case in BAD_ANSWERS])
def test_import_rejects_bad_lines_and_changes_nothing(tmp_path, bad, field):
    with pytest.raises(AnnotationPending):
        FileQueueAnnotator(tmp_path).annotate(make_requests(), iteration=1)
    write_answers(tmp_path / "first.jsonl", [{"id": IDS[0], "label": "a"}])
    import_answers(tmp_path, tmp_path / "first.jsonl")
    before = answers_path(tmp_path, 1).read_bytes()

    answers_file = tmp_path / "answers.jsonl"
    write_answers(answers_file, [{"id": IDS[2], "label": "a"}, "", bad, {"id": IDS[3], "label": "b"}])
    with pytest.raises(InvalidAnswer, match=rf"^{re.escape(str(answers_file))}:3: field '{field}': ") as info:
        import_answers(tmp_path, answers_file)
    assert (info.value.line, info.value.field) == (3, field)
    assert answers_path(tmp_path, 1).read_bytes() == before


def test_import_with_nothing_open_errors(tmp_path):
    write_answers(tmp_path / "answers.jsonl", [{"id": IDS[0], "label": "a"}])
    with pytest.raises(ValueError, match="no annotation request is waiting"):
        import_answers(tmp_path, tmp_path / "answers.jsonl")
    SimulatedHuman(tmp_path, TRUTH).annotate(make_requests(), iteration=1)  # fully answered
    with pytest.raises(ValueError, match="no annotation request is waiting"):
        import_answers(tmp_path, tmp_path / "answers.jsonl")


def test_import_targets_the_open_iteration(tmp_path):
    SimulatedHuman(tmp_path, TRUTH).annotate(make_requests(), iteration=9)
    with pytest.raises(AnnotationPending):
        FileQueueAnnotator(tmp_path).annotate(make_requests(), iteration=10)
    write_answers(tmp_path / "answers.jsonl", [{"id": IDS[0], "label": "b"}])
    assert import_answers(tmp_path, tmp_path / "answers.jsonl") == (10, 1)
    assert read_answers(tmp_path, 10) == {IDS[0]: "b"}


def test_exceptions_pickle():
    pending = AnnotationPending(2, "run/annotations/iter_2/request.jsonl", 5, "run")
    copy = pickle.loads(pickle.dumps(pending))
    assert (copy.iteration, copy.missing, str(copy)) == (2, 5, str(pending))
    invalid = InvalidAnswer("a.jsonl", 4, "label", "expected 'a' or 'b', got 'c'")
    assert str(pickle.loads(pickle.dumps(invalid))) == "a.jsonl:4: field 'label': expected 'a' or 'b', got 'c'"
