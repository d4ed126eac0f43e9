"""Iteration 0's validate step: gaps in the AI labels take reward model 0's label, and the eyes-off check warns
loudly when humans disagree with the AI where it should be right (exact, no Ray, no model)."""
import logging

import numpy as np
import pandas as pd

from rlthf.annotation.annotators import SimulatedHuman
from rlthf.config import load_config
from rlthf.run.corpus import write_texts
from rlthf.run.steps import validate_step
from rlthf.rundir import RunDir

N = 60


def setup(tmp_path, human_truth: str):
    ids = [f"p{i:02d}" for i in range(N)]
    shard = pd.DataFrame({"id": ids, "prompt": "Human: hi\n\nAssistant:", "response_a": [f" a{i}" for i in range(N)],
                          "response_b": [f" b{i}" for i in range(N)]})
    label = np.array(["a"] * N, dtype=object)
    label[[3, 7]] = None  # the judge left two pairs unlabelled
    labels = pd.DataFrame({"id": ids, "label": label, "label_source": "ai", "ai_label": label,
                           "initial_source": "ai", "human_iteration": -1})
    # reward model 0 prefers a everywhere, most strongly for the first pairs: they form the curve's upper left
    scores = pd.DataFrame({"id": ids, "reward_a": np.linspace(3.0, 0.1, N), "reward_b": 0.0})
    human = SimulatedHuman(tmp_path, {i: human_truth for i in ids})
    rd = RunDir(tmp_path / "run")
    rd.mark_done("prepare", pairs=N, test=0)  # validation always runs after prepare (the budget reads its counts)
    write_texts(rd, shard)
    return rd, shard, labels, scores, human


def test_gaps_are_filled_and_agreeing_humans_pass_quietly(tmp_path, caplog):
    rd, shard, labels, scores, human = setup(tmp_path, "a")
    config = load_config(None, ["annotation.eyes_off_min=5", "selection.min_points=10"])
    with caplog.at_level(logging.WARNING, logger="rlthf"):
        new = validate_step(rd, config, human, shard, labels, scores)
    assert new.loc[[3, 7], "label"].tolist() == ["a", "a"] and set(new.loc[[3, 7], "label_source"]) == {"rm"}
    assert human.questions_asked == 5 and (new["label_source"] == "human").sum() == 5
    assert set(human.asked_ids) <= set(shard["id"][:20])  # from the upper left of the curve
    info = rd.info("iter_0/validate")
    assert info == {**info, "filled": 2, "asked": 5, "batch_was_wrong": 0, "eyes_off_agreement": 1.0}
    assert "EYES-OFF" not in caplog.text


def test_disagreeing_humans_trigger_the_loud_warning_and_their_labels_are_kept(tmp_path, caplog):
    rd, shard, labels, scores, human = setup(tmp_path, "b")
    config = load_config(None, ["annotation.eyes_off_min=5", "selection.min_points=10"])
    with caplog.at_level(logging.WARNING, logger="rlthf"):
        new = validate_step(rd, config, human, shard, labels, scores)
    assert "EYES-OFF VALIDATION FAILED: humans agree with only 0% of 5" in caplog.text
    asked = new["id"].isin(human.asked_ids)
    assert (new.loc[asked, "label"] == "b").all() and (new.loc[asked, "label_source"] == "human").all()
    assert rd.info("iter_0/validate")["batch_was_wrong"] == 5


def test_zero_min_and_zero_fraction_switch_the_check_off(tmp_path):
    rd, shard, labels, scores, human = setup(tmp_path, "a")
    config = load_config(None, ["annotation.eyes_off_min=0", "annotation.eyes_off_fraction=0"])
    new = validate_step(rd, config, human, shard, labels, scores)
    assert human.questions_asked == 0 and (new["label_source"] != "human").all()
