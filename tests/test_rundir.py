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


def test_mirror_gets_each_finished_step_and_a_fresh_driver_resumes_from_it(tmp_path):
    mirror = tmp_path / "bucket" / "run"
    rd = RunDir(tmp_path / "node1", mirror=str(mirror))
    (rd.path("iterations", "iter_0", "scores.json")).write_text('{"acc": 0.8}')
    (rd.root / ".metrics.jsonl.x.tmp").write_text("half written")  # an atomic write in flight
    rd.mark_done("iter_0/score", seconds=2.0)
    assert json.loads((mirror / "steps.json").read_text()) == {"iter_0/score": {"seconds": 2.0}}
    assert (mirror / "iterations/iter_0/scores.json").read_text() == '{"acc": 0.8}'
    assert not (mirror / ".metrics.jsonl.x.tmp").exists()

    # only what changed goes up again: an untouched file is not re-sent
    (mirror / "iterations/iter_0/scores.json").write_text("left alone")
    rd.path("curated.parquet").write_bytes(b"PAR1")
    rd.mark_done("final/curate")
    assert (mirror / "iterations/iter_0/scores.json").read_text() == "left alone"
    assert (mirror / "curated.parquet").read_bytes() == b"PAR1"

    fresh = RunDir(tmp_path / "node2", mirror=str(mirror))  # another node, an empty output_dir
    assert sorted(fresh.steps) == ["final/curate", "iter_0/score"]
    assert (fresh.root / "curated.parquet").read_bytes() == b"PAR1"


def test_mirror_never_overwrites_a_local_run(tmp_path):
    RunDir(tmp_path / "a", mirror=str(tmp_path / "m")).mark_done("prepare")
    local = RunDir(tmp_path / "b")
    local.mark_done("prepare", seconds=9)
    assert RunDir(tmp_path / "b", mirror=str(tmp_path / "m")).info("prepare") == {"seconds": 9}
