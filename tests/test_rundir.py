"""Durable appends survive a crash mid-append; steps are recorded atomically."""
import json

from rlthf.rundir import RunDir, append_jsonl_durable, read_jsonl


def test_append_after_a_torn_line_cuts_the_fragment(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "p1"}\n{"id": "p2", "lab')  # killed mid-append
    assert read_jsonl(path) == [{"id": "p1"}]
    append_jsonl_durable(path, {"id": "p3"})
    assert read_jsonl(path) == [{"id": "p1"}, {"id": "p3"}]


def test_append_after_a_whole_record_without_newline_keeps_it(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "p1"}\n{"id": "p2"}')  # killed between the record and its newline
    append_jsonl_durable(path, {"id": "p3"})
    assert [r["id"] for r in read_jsonl(path)] == ["p1", "p2", "p3"]


def test_steps_survive_a_new_process(tmp_path):
    rd = RunDir(tmp_path)
    rd.mark_done("prepare", seconds=1.5)
    again = RunDir(tmp_path)
    assert again.done("prepare") and again.info("prepare") == {"seconds": 1.5} and not again.done("iter_0/train")
    assert json.loads((tmp_path / "steps.json").read_text()) == {"prepare": {"seconds": 1.5}}
