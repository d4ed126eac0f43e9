"""The whole loop on real HH-RLHF pairs with the real MiniLM backbone and a local Ray: end to end, rerun,
a real SIGKILL mid-iteration and its resumption, the file-queue round trip, and a refused config change."""
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from rlthf.annotation.annotators import AnnotationPending, SimulatedHuman
from rlthf.annotation.importing import import_answers
from rlthf.annotation.store import read_answers
from rlthf.config import ConfigError, load_config
from rlthf.run.driver import run
from rlthf.annotation.store import AUDIT_ITERATION
from tests.conftest import REPO

ITERATIONS = 3


@pytest.fixture
def small_config(hh_rlhf_path, embedding_cache):
    """configs/demo.yaml on the first 500 valid pairs (shard of 100, 4 human labels per iteration)."""
    def make(output_dir, *extra):
        return load_config(REPO / "configs/demo.yaml", [
            f"output_dir={output_dir}", f"data.path={hh_rlhf_path}", "data.max_pairs=500",
            f"reward.cache_dir={embedding_cache}", f"selection.iterations={ITERATIONS}", *extra])
    return make


def quiet(_):
    pass


def test_demo_loop_end_to_end(ray_local, small_config, tmp_path):
    result = run(small_config(tmp_path / "run"), echo=quiet)
    rows = result.metrics
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS + 1))
    # 5 eyes-off validation labels after iteration 0, then 4% of the 100-pair shard per iteration
    assert [r["human_labels"] for r in rows] == [5, 9, 13, 17]
    assert rows[0]["eyes_off_agreement"] == 1.0  # the upper left of the curve holds right AI labels
    assert rows[0]["label_acc"] == pytest.approx(0.75, abs=0.01)  # the simulated labeler's calibrated accuracy
    assert rows[-1]["label_acc"] > rows[0]["label_acc"]
    for r in rows:
        lo, hi = r["test_acc_ci"]
        assert lo < r["test_acc"] < hi and r["test_pairs"] > 50
    curated = pd.read_parquet(result.curated_path)
    assert list(curated.columns[:3]) == ["prompt", "chosen", "rejected"]
    assert curated["id"].is_unique and len(curated) == result.summary["curated_pairs"]
    summary = result.summary
    corpus = len(curated)
    assert summary["audit_labels"] == summary["audit_pairs"] == -(-corpus * 5 // 100)  # 5% of the corpus
    assert (curated["label_source"] == "human").sum() == 17 + summary["audit_labels"]
    for name in ("ai", "rm", "curated"):  # the audit's estimates, each with its 95% interval
        estimate = summary["estimate"][name]
        assert 0 <= estimate["low"] <= estimate["value"] <= estimate["high"] <= 1
    # the simulated AI labels the whole corpus at its calibrated accuracy; the audit's interval covers it
    assert summary["ai_label_acc_corpus"] == pytest.approx(0.75, abs=0.01)
    assert summary["estimate"]["ai"]["low"] <= summary["ai_label_acc_corpus"] <= summary["estimate"]["ai"]["high"]
    assert summary["curation"]["policy"] == "auto" and summary["curated_label_acc"] >= summary["ai_label_acc_corpus"]
    pairs = pd.read_parquet(tmp_path / "run/data/pairs.parquet")
    assert not set(curated["id"]) & set(pairs.loc[pairs["split"] == "test", "id"])  # the test set never leaks
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == list(range(ITERATIONS + 1))
    for k in range(1, ITERATIONS + 1):
        assert (tmp_path / f"run/iterations/iter_{k}/curve.png").stat().st_size > 10_000
    assert (tmp_path / "run/accuracy.png").exists()

    # A rerun of a finished run recomputes nothing and asks nobody anything.
    human = SimulatedHuman(tmp_path / "run", dict(zip(pairs["id"], pairs["truth"])))
    again = run(small_config(tmp_path / "run"), annotator=human, echo=quiet)
    assert human.questions_asked == 0 and again.metrics == rows


def test_killed_run_resumes_with_the_same_final_labels(ray_local, small_config, tmp_path):
    reference = run(small_config(tmp_path / "reference"), echo=quiet)

    address = ray_local.get_runtime_context().gcs_address
    config = small_config(tmp_path / "killed", f"ray.address={address}")
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    steps = tmp_path / "killed/steps.json"
    proc = subprocess.Popen([sys.executable, "-m", "rlthf.cli", "run", "--config", str(config_path)], cwd=REPO,
                            env={**os.environ, "RLTHF_PROGRESS": "0"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and "iter_2/annotate" in steps.read_text():
            break
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no cleanup, no finally blocks
    _, stderr = proc.communicate()
    assert proc.returncode == -9, stderr.decode()[-2000:]
    finished = json.loads(steps.read_text())
    assert "iter_2/annotate" in finished and "final/curate" not in finished

    resumed = run(load_config(config_path), echo=quiet)
    pd.testing.assert_frame_equal(pd.read_parquet(resumed.curated_path), pd.read_parquet(reference.curated_path))
    assert resumed.metrics[-1]["label_acc"] == reference.metrics[-1]["label_acc"]
    for k in range(1, ITERATIONS + 1):
        answers = [json.loads(line)["id"] for line in
                   (tmp_path / f"killed/annotations/iter_{k}/answers.jsonl").read_text().splitlines()]
        assert len(answers) == len(set(answers)) == 4  # nobody was asked twice
        assert read_answers(tmp_path / "killed", k) == read_answers(tmp_path / "reference", k)


def test_file_queue_stops_for_people_and_resumes_with_their_answers(ray_local, small_config, tmp_path):
    config = small_config(tmp_path / "run", "annotation.annotator=file_queue", "selection.iterations=1")
    truth = None
    requested = []
    # the eyes-off validation, iteration 1's batch, then the audit: 5% of the corpus, a uniform sample
    for iteration, size in ((0, 5), (1, 4), (AUDIT_ITERATION, None)):
        with pytest.raises(AnnotationPending) as pending:
            run(config, echo=quiet)
        assert pending.value.iteration == iteration
        request = pd.read_json(pending.value.request_path, lines=True)
        assert list(request.columns) == ["id", "prompt", "response_a", "response_b"]
        corpus = int((pd.read_parquet(tmp_path / "run/data/pairs.parquet")["split"] == "train").sum())
        assert len(request) == (size or -(-corpus * 5 // 100))
        truth = pd.read_parquet(tmp_path / "run/data/pairs.parquet").set_index("id")["truth"]
        answers = tmp_path / f"answers_{iteration}.jsonl"
        answers.write_text("".join(json.dumps({"id": i, "label": truth[i].upper()}) + "\n" for i in request["id"]))
        assert import_answers(tmp_path / "run", answers) == (iteration, len(request))
        requested += request["id"].tolist()

    result = run(config, echo=quiet)
    curated = pd.read_parquet(result.curated_path).set_index("id")
    human = curated[curated["label_source"] == "human"]
    assert sorted(human.index) == sorted(requested)
    chosen_is_a = human["chosen"] == pd.read_parquet(tmp_path / "run/data/texts.parquet").set_index("id")[
        "response_a"].reindex(human.index)
    assert (chosen_is_a.map({True: "a", False: "b"}) == truth[human.index]).all()
    assert result.metrics[-1]["human_labels"] == 9 and result.summary["audit_labels"] == len(requested) - 9


def test_resuming_with_other_settings_is_refused_and_with_more_iterations_redoes_the_final_steps(
        ray_local, small_config, tmp_path):
    finished = run(small_config(tmp_path / "run", "selection.iterations=0"), echo=quiet)
    assert "iter_0" in finished.summary["checkpoint"]
    with pytest.raises(ConfigError, match=r"^selection.annotation_fraction: this run directory"):
        run(small_config(tmp_path / "run", "selection.annotation_fraction=0.1"), echo=quiet)

    # One more iteration: the audit and the curation read its labels and its reward model, not iteration 0's.
    longer = run(small_config(tmp_path / "run", "selection.iterations=1"), echo=quiet)
    steps = json.loads((tmp_path / "run/steps.json").read_text())
    assert steps["final/audit"]["after_iteration"] == steps["final/curate"]["after_iteration"] == 1
    assert "iter_1" in longer.summary["checkpoint"] and [r["iteration"] for r in longer.metrics] == [0, 1]
    curated = pd.read_parquet(longer.curated_path)
    asked = set(read_answers(tmp_path / "run", 1))
    assert len(asked) == 4 and asked <= set(curated["id"][curated["label_source"] == "human"])
    assert (curated["label_source"] == "human").sum() == 9 + longer.summary["audit_labels"]
