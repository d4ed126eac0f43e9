"""The answer log (undo, overlap, agreement), the budget, and the Label Studio and Argilla round trips on real
HH-RLHF pairs, with every bad import rejected by position and field and nothing half-applied."""
from __future__ import annotations

import json
import uuid

import pytest

from rlthf.annotation.annotators import AnnotationPending, FileQueueAnnotator
from rlthf.annotation.store import (InvalidAnswer, agreement, answers_path, fold_answers, iteration_agreement, missing_answers, read_answer_records, read_answers)
from rlthf.annotation.importing import import_answers
from rlthf.core.selection import budget_labels, cap_to_budget
from rlthf.config import ConfigError, load_config
from rlthf.data import read_pairs
from rlthf.annotation.formats import LABELSTUDIO_CONFIG, export_request


@pytest.fixture(scope="module")
def hh_pairs(hh_rlhf_path):
    pairs, _ = read_pairs(hh_rlhf_path, seed=0, max_pairs=40)
    return pairs.iloc[:8].reset_index(drop=True)


@pytest.fixture
def open_run(tmp_path, hh_pairs):
    """A run directory waiting for answers to 8 real pairs in iteration 2."""
    run = tmp_path / "run"
    with pytest.raises(AnnotationPending):
        FileQueueAnnotator(run).annotate(hh_pairs, 2)
    return run


def truth_of(hh_pairs) -> dict[str, str]:
    return dict(zip(hh_pairs["id"], hh_pairs["human_label"]))


# the answer log

def test_fold_takes_back_the_undone_answer_of_that_annotator_only():
    log = [{"id": "p", "label": "a", "annotator": "ann"}, {"id": "p", "label": "b", "annotator": "bob"},
           {"id": "p", "undo": True, "annotator": "ann"}, {"id": "p", "label": "b", "annotator": "ann"},
           {"id": "q", "label": "a", "annotator": "ann"}, {"id": "q", "undo": True, "annotator": "ann"},
           {"id": "q", "undo": True, "annotator": "ann"}]  # a second undo has nothing left to take back
    folded = fold_answers(log)
    assert [(a["annotator"], a["label"]) for a in folded["p"]] == [("bob", "b"), ("ann", "b")]
    assert "q" not in folded


def test_agreement_and_kappa_exactly():
    assert agreement(list("aabb"), list("aabb")) == {"pairs": 4, "agree": 1.0, "kappa": 1.0}
    # observed 0.5; chance 0.5 * 0.5 + 0.5 * 0.5 = 0.5, so kappa 0
    assert agreement(list("aabb"), list("abab")) == {"pairs": 4, "agree": 0.5, "kappa": 0.0}
    # observed 0.75; chance 0.75 * 0.5 + 0.25 * 0.5 = 0.5, so kappa 0.5
    assert agreement(list("aaab"), list("aabb")) == {"pairs": 4, "agree": 0.75, "kappa": 0.5}
    assert agreement(list("aa"), list("aa"))["kappa"] is None  # chance agreement is 1
    assert agreement([], []) == {"pairs": 0, "agree": None, "kappa": None}


def test_overlap_pairs_wait_for_two_people_and_report_agreement(tmp_path, hh_pairs):
    run = tmp_path / "run"
    queue = FileQueueAnnotator(run, overlap=0.5, seed=3)
    with pytest.raises(AnnotationPending) as pending:
        queue.annotate(hh_pairs, 1)
    overlap = json.loads((run / "annotations/iter_1/overlap.json").read_text())
    assert 0 < len(overlap) < 8 and pending.value.missing == 8 + len(overlap)
    truth = truth_of(hh_pairs)
    first = run / "first.jsonl"
    first.write_text("".join(json.dumps({"id": i, "label": truth[i], "annotator": "ann"}) + "\n" for i in truth))
    import_answers(run, first)
    assert missing_answers(run, 1) == len(overlap)
    second = run / "second.jsonl"  # bob disagrees on the first overlap pair only
    second.write_text("".join(json.dumps({"id": i, "label": ("b" if truth[i] == "a" else "a") if n == 0 else truth[i],
                                          "annotator": "bob"}) + "\n" for n, i in enumerate(overlap)))
    import_answers(run, second)
    assert queue.annotate(hh_pairs, 1) == truth  # the first answer is the label
    report = json.loads((run / "annotations/iter_1/agreement.json").read_text())
    assert report == iteration_agreement(run, 1)
    assert report["pairs"] == len(overlap) and report["agree"] == pytest.approx(1 - 1 / len(overlap))


# the budget

@pytest.mark.parametrize("budget, corpus, expected", [(None, 100, None), (0, 100, 0), (120, 10, 120),
                                                      ("5%", 1820, 91), (" 2.5 % ", 1000, 25), ("100%", 7, 7)])
def test_budget_labels(budget, corpus, expected):
    assert budget_labels(budget, corpus) == expected


@pytest.mark.parametrize("budget", [-1, "5", "abc", "101%", True, 1.5])
def test_budget_labels_rejects(budget):
    with pytest.raises(ValueError, match="a budget is a count"):
        budget_labels(budget, 100)


def test_cap_to_budget_never_exceeds_it():
    assert cap_to_budget(17, None, corpus_size=1820, used=500) == 17
    assert cap_to_budget(17, "5%", corpus_size=1820, used=80) == 11  # 91 - 80
    assert cap_to_budget(17, 90, corpus_size=1820, used=90) == 0
    assert cap_to_budget(17, 90, corpus_size=1820, used=95) == 0  # a lowered budget asks for nothing more
    used = 5
    for _ in range(10):  # the loop's iterations: the total stops at the budget
        used += cap_to_budget(17, 60, corpus_size=1820, used=used)
    assert used == 60


@pytest.mark.parametrize("value, ok", [("120", True), ("'5%'", True), ("null", True), ("-3", False),
                                       ("'5 percent'", False), ("'150%'", False), ("0.5", False)])
def test_budget_config_is_checked_at_load(value, ok):
    if ok:
        load_config(None, [f"annotation.budget={value}"])
    else:
        with pytest.raises(ConfigError, match=r"^annotation\.budget: "):
            load_config(None, [f"annotation.budget={value}"])
    with pytest.raises(ConfigError, match=r"^annotation\.overlap: must be in \[0, 1\]"):
        load_config(None, ["annotation.overlap=1.5"])


# Label Studio

def labelstudio_export(tasks: list[dict], answers: dict[str, tuple], *, user=7) -> list[dict]:
    """What Label Studio's JSON export holds after people answered ``{pair id: (label, comment)}``."""
    out = []
    for n, task in enumerate(tasks, 1):
        data = task["data"]
        annotations = []
        if data["pair_id"] in answers:
            label, comment = answers[data["pair_id"]]
            result = [{"id": f"r{n}", "type": "pairwise", "from_name": "preference", "to_name": "left,right",
                       "origin": "manual", "value": {"selected": "left" if data["shown"][0] == label else "right"}}]
            if comment:
                result.append({"id": f"c{n}", "type": "textarea", "from_name": "comment", "to_name": "left",
                               "value": {"text": [comment]}})
            annotations.append({"id": 100 + n, "completed_by": user, "result": result, "was_cancelled": False,
                                "created_at": "2026-11-23T21:00:00Z", "updated_at": "2026-11-23T21:01:00Z"})
        out.append({"id": n, "data": data, "annotations": annotations, "predictions": []})
    return out


def test_labelstudio_round_trip(open_run, hh_pairs, tmp_path):
    lines = export_request(open_run, "labelstudio", tmp_path / "ls/tasks.json")
    assert len(lines) == 2 and "8 Label Studio tasks" in lines[0]
    tasks = json.loads((tmp_path / "ls/tasks.json").read_text())
    assert (tmp_path / "ls/tasks.xml").read_text() == LABELSTUDIO_CONFIG
    assert '<Pairwise name="preference" toName="left,right"/>' in LABELSTUDIO_CONFIG
    by_id = hh_pairs.set_index("id")
    assert [t["data"]["pair_id"] for t in tasks] == hh_pairs["id"].tolist()
    assert {t["data"]["shown"] for t in tasks} == {"ab", "ba"}  # both orders occur among 8 coins
    for t in tasks:
        pair = by_id.loc[t["data"]["pair_id"]]
        assert (t["data"]["left"], t["data"]["right"]) == ((pair["response_a"], pair["response_b"])
                                                           if t["data"]["shown"] == "ab"
                                                           else (pair["response_b"], pair["response_a"]))
        assert t["data"]["dialogue"][0]["author"] == "Human" and "label" not in json.dumps(t)

    truth = truth_of(hh_pairs)
    ids = hh_pairs["id"].tolist()
    first = {i: (truth[i], "clear" if n == 0 else "") for n, i in enumerate(ids[:5])}
    export = labelstudio_export(tasks, first)
    export[5]["annotations"] = [{"id": 9, "completed_by": 7, "result": [], "was_cancelled": False}]  # choice lost
    export[6]["annotations"] = [{"id": 10, "completed_by": 7, "was_cancelled": True,
                                 "result": [{"type": "pairwise", "value": {"selected": "left"}}]}]  # skipped
    (tmp_path / "export1.json").write_text(json.dumps(export))
    assert import_answers(open_run, tmp_path / "export1.json", format="labelstudio") == (2, 5)
    assert read_answers(open_run, 2) == {i: truth[i] for i in ids[:5]}
    record = read_answer_records(open_run, 2)[ids[0]][0]
    assert (record["annotator"], record["comment"], record["source"], record["time"]) == (
        "labelstudio:7", "clear", "labelstudio", "2026-11-23T21:01:00Z")

    # the second export holds only the rest, answered by a user object as some exports expand it
    export_request(open_run, "labelstudio", tmp_path / "ls2/tasks.json")
    rest = json.loads((tmp_path / "ls2/tasks.json").read_text())
    assert [t["data"]["pair_id"] for t in rest] == ids[5:]
    export = labelstudio_export(rest, {i: (truth[i], "") for i in ids[5:]}, user={"id": 8, "email": "eve@lab"})
    (tmp_path / "export2.json").write_text(json.dumps(export))
    assert import_answers(open_run, tmp_path / "export2.json", format="labelstudio") == (2, 3)
    assert FileQueueAnnotator(open_run).annotate(hh_pairs, 2) == truth
    assert read_answer_records(open_run, 2)[ids[7]][0]["annotator"] == "labelstudio:eve@lab"


def pairwise(selected):
    return [{"type": "pairwise", "value": {"selected": selected}}]


def other(task):
    return "right" if task["annotations"][0]["result"][0]["value"]["selected"] == "left" else "left"


# (case, the third task of a bad file made from the answered export `ex`, whose task 0 is imported already; field)
LABELSTUDIO_BAD = [
    ("task not an object", lambda ex: "task", "task"),
    ("missing data", lambda ex: {"annotations": []}, "data"),
    ("missing pair id", lambda ex: {"data": {"shown": "ab"}}, "data.pair_id"),
    ("bad shown", lambda ex: {"data": {**ex[3]["data"], "shown": "left"}}, "data.shown"),
    ("unknown id", lambda ex: {**ex[3], "data": {**ex[3]["data"], "pair_id": "nope"}}, "data.pair_id"),
    ("annotations not a list", lambda ex: {**ex[3], "annotations": {"result": []}}, "annotations"),
    ("result not a list", lambda ex: {**ex[3], "annotations": [{"result": "left"}]}, "annotations[0].result"),
    ("bad selected", lambda ex: {**ex[3], "annotations": [{"completed_by": 7, "result": pairwise("up")}]},
     "annotations[0].result.value.selected"),
    ("two pairwise results", lambda ex: {**ex[3], "annotations": [
        {"completed_by": 7, "result": pairwise("left") + pairwise("right")}]}, "annotations[0].result"),
    ("bad annotator", lambda ex: {**ex[3], "annotations": [{"completed_by": [7], "result": pairwise("left")}]},
     "annotations[0].completed_by"),
    ("duplicate", lambda ex: {**ex[3], "annotations": ex[3]["annotations"] * 2}, "annotations[1].result"),
    ("conflict of one annotator", lambda ex: {**ex[3], "annotations": ex[3]["annotations"] + [
        {"completed_by": 7, "result": pairwise(other(ex[3]))}]}, "annotations[1].result"),
    ("conflict of two annotators", lambda ex: {**ex[3], "annotations": ex[3]["annotations"] + [
        {"completed_by": 8, "result": pairwise(other(ex[3]))}]}, "annotations[1].result"),
    ("already answered", lambda ex: ex[0], "annotations[0].result"),
]


@pytest.mark.parametrize("spoil, field", [c[1:] for c in LABELSTUDIO_BAD], ids=[c[0] for c in LABELSTUDIO_BAD])
def test_labelstudio_import_rejects_bad_records_and_changes_nothing(open_run, hh_pairs, tmp_path, spoil, field):
    export_request(open_run, "labelstudio", tmp_path / "tasks.json")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    truth = truth_of(hh_pairs)
    export = labelstudio_export(tasks, {i: (truth[i], "") for i in truth})
    (tmp_path / "first.json").write_text(json.dumps(export[:1]))
    import_answers(open_run, tmp_path / "first.json", format="labelstudio")
    before = answers_path(open_run, 2).read_bytes()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(export[1:3] + [spoil(export)]))
    with pytest.raises(InvalidAnswer) as info:
        import_answers(open_run, bad, format="labelstudio")
    assert (info.value.line, info.value.field) == (3, field), str(info.value)
    assert str(info.value).startswith(f"{bad}: record 3: field '{field}': ")
    assert answers_path(open_run, 2).read_bytes() == before


@pytest.mark.parametrize("text, reason", [("[{", "not valid JSON"), ('{"tasks": []}', "expected a JSON list")])
def test_labelstudio_import_rejects_a_file_that_is_no_task_list(open_run, tmp_path, text, reason):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(InvalidAnswer, match=rf"field 'json': {reason}"):
        import_answers(open_run, tmp_path / "bad.json", format="labelstudio")
    assert not answers_path(open_run, 2).exists()


# Argilla

def argilla_answered(records: list[dict], answers: dict[str, list[tuple]]) -> list[dict]:
    """What ``dataset.to_disk`` writes after people answered: ``{pair id: [(user, label, comment), ...]}``,
    built with the SDK's own Record and Response objects."""
    import argilla as rg

    out = []
    for data in records:
        record = rg.Record.from_dict(data)
        for user, label, comment in answers.get(record.id, []):
            value = "response_1" if record.metadata["shown"][0] == label else "response_2"
            record.responses.add(rg.Response("preference", value, user_id=user, status="submitted"))
            if comment:
                record.responses.add(rg.Response("comment", comment, user_id=user, status="submitted"))
        out.append(record.to_dict())
    return out


def test_argilla_round_trip(open_run, hh_pairs, tmp_path):
    import argilla as rg

    lines = export_request(open_run, "argilla", tmp_path / "argilla")
    assert "8 Argilla records" in lines[0] and "rg.Dataset.from_disk" in lines[0]
    settings = json.loads((tmp_path / "argilla/.argilla/settings.json").read_text())
    assert [q["name"] for q in settings["questions"]] == ["preference", "comment"]
    assert [f["name"] for f in settings["fields"]] == ["prompt", "response_1", "response_2"]
    assert json.loads((tmp_path / "argilla/.argilla/dataset.json").read_text())["name"] == "rlthf-iteration-2"
    records = json.loads((tmp_path / "argilla/records.json").read_text())
    by_id = hh_pairs.set_index("id")
    assert [r["id"] for r in records] == hh_pairs["id"].tolist()
    for r in records:
        pair = by_id.loc[r["id"]]
        first = pair["response_a"] if r["metadata"]["shown"] == "ab" else pair["response_b"]
        assert r["fields"]["response_1"] == first and r["fields"]["prompt"].startswith("Human: ")
        assert rg.Record.from_dict(r).metadata["iteration"] == 2  # the SDK reads its own format back

    truth = truth_of(hh_pairs)
    ids = hh_pairs["id"].tolist()
    ann, bob = uuid.UUID(int=1), uuid.UUID(int=2)
    answered = argilla_answered(records, {i: [(ann if n % 2 else bob, truth[i], "ok" if n == 1 else "")]
                                          for n, i in enumerate(ids[:6])})
    answered[6]["responses"] = {"preference": [{"value": None, "user_id": str(ann)}]}  # a discarded record
    out = tmp_path / "answered"
    out.mkdir()
    (out / "records.json").write_text(json.dumps(answered))
    assert import_answers(open_run, out, format="argilla") == (2, 6)
    assert read_answers(open_run, 2) == {i: truth[i] for i in ids[:6]}
    record = read_answer_records(open_run, 2)[ids[1]][0]
    assert (record["annotator"], record["comment"], record["source"]) == (f"argilla:{ann}", "ok", "argilla")

    export_request(open_run, "argilla", tmp_path / "argilla2")
    rest = json.loads((tmp_path / "argilla2/records.json").read_text())
    assert [r["id"] for r in rest] == ids[6:]
    (tmp_path / "rest.json").write_text(json.dumps(argilla_answered(rest, {i: [(ann, truth[i], "")] for i in ids[6:]})))
    assert import_answers(open_run, tmp_path / "rest.json", format="argilla") == (2, 2)
    assert FileQueueAnnotator(open_run).annotate(hh_pairs, 2) == truth


def response(value, user=1):
    return {"value": value, "user_id": str(uuid.UUID(int=user))}


ARGILLA_BAD = [  # (case, spoil the third record, field)
    ("record not an object", lambda r: "record", "record"),
    ("responses not an object", lambda r: {**r, "responses": ["response_1"]}, "responses"),
    ("response without a user", lambda r: {**r, "responses": {"preference": [{"value": "response_1"}]}}, "responses"),
    ("missing id", lambda r: {**r, "id": None}, "id"),
    ("bad shown", lambda r: {**r, "metadata": {"shown": "left"}}, "metadata.shown"),
    ("unknown id", lambda r: {**r, "id": "nope"}, "id"),
    ("bad value", lambda r: {**r, "responses": {"preference": [response("response_3")]}},
     "responses.preference[0].value"),
    ("one user twice", lambda r: {**r, "responses": {"preference": [response("response_1")] * 2}}, "responses"),
    ("conflict of two annotators", lambda r: {**r, "responses": {"preference": [response("response_1"),
                                                                                response("response_2", 2)]}},
     "responses.preference[1]"),
]


@pytest.mark.parametrize("spoil, field", [c[1:] for c in ARGILLA_BAD], ids=[c[0] for c in ARGILLA_BAD])
def test_argilla_import_rejects_bad_records_and_changes_nothing(open_run, tmp_path, spoil, field):
    export_request(open_run, "argilla", tmp_path / "argilla")
    records = json.loads((tmp_path / "argilla/records.json").read_text())
    answered = [{**r, "responses": {"preference": [response("response_1")]}} for r in records[:3]]
    (tmp_path / "first.json").write_text(json.dumps(answered[:1]))
    import_answers(open_run, tmp_path / "first.json", format="argilla")
    before = answers_path(open_run, 2).read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(answered[1:2] + [spoil(answered[2])]))
    with pytest.raises(InvalidAnswer) as info:
        import_answers(open_run, bad, format="argilla")
    assert (info.value.line, info.value.field) == (2, field), str(info.value)
    assert str(info.value).startswith(f"{bad}: record 2: field '{field}': ")
    assert answers_path(open_run, 2).read_bytes() == before

    (tmp_path / "again.json").write_text(json.dumps(answered[:1]))  # imported before: refused, nothing changes
    with pytest.raises(InvalidAnswer, match="already answered"):
        import_answers(open_run, tmp_path / "again.json", format="argilla")
    (tmp_path / "broken.json").write_text('[{"id": ')
    with pytest.raises(InvalidAnswer, match=r":1: field 'json': not valid JSON"):
        import_answers(open_run, tmp_path / "broken.json", format="argilla")
    assert answers_path(open_run, 2).read_bytes() == before


# the command line

def test_cli_export_import_and_serve_refusal(open_run, hh_pairs, tmp_path, capsys):
    from rlthf.cli import main

    assert main(["annotate", "export", "--run", str(open_run), "--format", "labelstudio",
                 str(tmp_path / "batch.json")]) == 0
    assert "8 Label Studio tasks" in capsys.readouterr().out
    tasks = json.loads((tmp_path / "batch.json").read_text())
    truth = truth_of(hh_pairs)
    (tmp_path / "export.json").write_text(json.dumps(labelstudio_export(tasks[:3], {i: (truth[i], "") for i in truth})))
    assert main(["annotate", "import", "--run", str(open_run), "--format", "labelstudio",
                 str(tmp_path / "export.json")]) == 0
    assert "imported 3 answers for iteration 2" in capsys.readouterr().out
    assert main(["annotate", "import", "--run", str(open_run), "--format", "labelstudio",
                 str(tmp_path / "export.json")]) == 2  # the same file again: already answered
    assert "record 1: field 'annotations[0].result'" in capsys.readouterr().err
    assert main(["annotate", "serve", "--run", str(open_run), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert read_answers(open_run, 2) == {i: truth[i] for i in hh_pairs["id"][:3]}


# the loop keeps to the budget

def test_loop_never_exceeds_the_budget(ray_local, tmp_path, hh_rlhf_path, embedding_cache):
    from rlthf.run.driver import run
    from tests.conftest import REPO

    # 5 eyes-off labels, then 4 in iteration 1 would make 9; a budget of 7 leaves 2 (cap_to_budget's own test
    # covers an exhausted budget)
    config = load_config(REPO / "configs/demo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.path={hh_rlhf_path}", "data.max_pairs=500",
        f"reward.cache_dir={embedding_cache}", "selection.iterations=1", "annotation.budget=7",
        "annotation.audit_fraction=0"])
    result = run(config, echo=lambda _: None)
    assert [r["human_labels"] for r in result.metrics] == [5, 7]
    assert [r["asked"] for r in result.metrics] == [5, 2]
    # with an audit (5% of a ~400-pair corpus: 20 wanted), half the budget of 12 is set aside for it: 6, then the
    # eyes-off 5 and 1 targeted label; the budget holds with the audit's labels counted
    config = load_config(REPO / "configs/demo.yaml", [
        f"output_dir={tmp_path / 'audited'}", f"data.path={hh_rlhf_path}", "data.max_pairs=500",
        f"reward.cache_dir={embedding_cache}", "selection.iterations=1", "annotation.budget=12"])
    result = run(config, echo=lambda _: None)
    assert [r["human_labels"] for r in result.metrics] == [5, 6] and result.summary["audit_labels"] == 6
    assert result.summary["human_labels"] == 12 and [r["asked"] for r in result.metrics] == [5, 1]
