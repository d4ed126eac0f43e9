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


def test_workers_find_the_run_in_its_mirror_and_a_file_shared_mid_step_is_there_at_once(tmp_path):
    from rlthf.rundir import join_location

    assert join_location("s3://bucket/runs/", "data", "texts.parquet") == "s3://bucket/runs/data/texts.parquet"
    assert join_location(tmp_path, "data", "t") == str(tmp_path / "data" / "t")
    alone = RunDir(tmp_path / "alone")
    assert alone.shared("data", "texts.parquet") == str(tmp_path / "alone" / "data" / "texts.parquet")
    rd = RunDir(tmp_path / "node", mirror=str(tmp_path / "bucket"))
    assert rd.shared("data", "texts.parquet") == str(tmp_path / "bucket" / "data" / "texts.parquet")
    rd.path("data", "texts.parquet").write_bytes(b"PAR1")
    assert rd.share("data", "texts.parquet") == rd.shared("data", "texts.parquet")
    assert (tmp_path / "bucket" / "data" / "texts.parquet").read_bytes() == b"PAR1"  # before the step is done
    rd.mark_done("prepare")  # and not sent again with the step
    (tmp_path / "bucket" / "data" / "texts.parquet").write_bytes(b"left alone")
    rd.mark_done("features")
    assert (tmp_path / "bucket" / "data" / "texts.parquet").read_bytes() == b"left alone"


def test_a_folder_on_a_uri_is_emptied_and_written_in_place(tmp_path):
    from rlthf.rundir import replace_dir_when_done

    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"a crash's leftovers")
    with replace_dir_when_done(f"file://{folder}") as target:
        assert target == f"file://{folder}" and not any(folder.iterdir())
        (folder / "part-1.parquet").write_bytes(b"new")
    assert [p.name for p in folder.iterdir()] == ["part-1.parquet"]
