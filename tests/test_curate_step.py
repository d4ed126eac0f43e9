"""The final steps on a stand-in reward model with a known answer (the longer response wins): the audit draws a
uniform sample of the pairs without a human label, and curation labels the whole corpus by its policy."""
import numpy as np
import pandas as pd
import pytest

from rlthf.annotation.annotators import SimulatedHuman
from rlthf.config import load_config
from rlthf.data import read_pairs
from rlthf.run.corpus import write_texts
from rlthf.run.steps import audit_step, curate_step
from rlthf.rundir import RunDir


class LengthReward:
    """A stand-in reward backend: the longer response is preferred."""

    def score(self, pairs, checkpoint):
        def rewards(batch):
            return {"id": batch["id"], "reward_a": np.array([len(r) for r in batch["response_a"]], float),
                    "reward_b": np.array([len(r) for r in batch["response_b"]], float)}
        return pairs.map_batches(rewards, batch_format="numpy")


def length_label(pairs: pd.DataFrame) -> pd.Series:
    return pd.Series(np.where(pairs["response_a"].str.len() >= pairs["response_b"].str.len(), "a", "b"),
                     index=pairs["id"])


@pytest.fixture
def corpus_run(tmp_path, hh_rlhf_path):
    """300 pairs: 250 in the corpus (50 in the shard, 4 of them human-labelled), 50 test. The truth is the length
    label on 95% of the pairs; the AI label is the truth on 65%."""
    pairs, _ = read_pairs(hh_rlhf_path, max_pairs=300, seed=0)
    rng = np.random.default_rng(0)
    by_length = length_label(pairs).to_numpy()
    pairs["truth"] = np.where(rng.random(len(pairs)) < 0.95, by_length, np.where(by_length == "a", "b", "a"))
    pairs["split"] = np.where(np.arange(len(pairs)) < 250, "train", "test")
    pairs["in_shard"] = np.arange(len(pairs)) < 50
    corpus = pairs[pairs["split"] == "train"].reset_index(drop=True)
    ai = np.where(rng.random(len(corpus)) < 0.65, corpus["truth"], np.where(corpus["truth"] == "a", "b", "a"))
    ai_labels = pd.DataFrame({"id": corpus["id"], "ai_label": ai.astype(object)})
    shard = corpus[corpus["in_shard"]]
    source = np.where(np.arange(len(shard)) < 4, "human", "ai").astype(object)
    label = np.where(source == "human", shard["truth"], ai[:len(shard)]).astype(object)
    labels = pd.DataFrame({"id": shard["id"], "label": label, "label_source": source,
                           "ai_label": ai[:len(shard)].astype(object), "initial_source": "ai"})
    rd = RunDir(tmp_path / "run")
    rd.mark_done("prepare", pairs=300, test=50, truth_flipped_fraction=0.0, audit_reserved=60)
    write_texts(rd, pairs)
    return rd, pairs, corpus, labels, ai_labels


def test_audit_asks_a_uniform_sample_of_the_pairs_without_a_human_label(corpus_run, tmp_path):
    rd, pairs, corpus, labels, _ = corpus_run
    config = load_config(None)
    human = SimulatedHuman(rd.root, dict(zip(corpus["id"], corpus["truth"])))
    audit = audit_step(rd, config, human, corpus, labels)
    assert len(audit) == 60 == human.questions_asked and audit["id"].is_unique
    assert not set(audit["id"]) & set(labels["id"][labels["label_source"] == "human"])
    assert (audit.set_index("id")["label"] == corpus.set_index("id")["truth"].reindex(audit["id"])).all()
    again = audit_step(rd, config, human, corpus, labels)  # done: nobody is asked again
    assert human.questions_asked == 60 and again.equals(audit)


@pytest.mark.parametrize("policy", ["rm", "ai", "auto"])
def test_curation_policies_keep_human_labels_and_say_what_they_did(ray_local, corpus_run, policy):
    rd, pairs, corpus, labels, ai_labels = corpus_run
    config = load_config(None, [f"curate.policy={policy}"])
    audit = audit_step(rd, config, SimulatedHuman(rd.root, dict(zip(corpus["id"], corpus["truth"]))), corpus, labels)
    path, summary = curate_step(rd, config, LengthReward(), rd.root, pairs, labels, ai_labels, audit)
    curated = pd.read_parquet(path).set_index("id")
    assert set(curated.index) == set(corpus["id"])  # the whole corpus, never the test split
    human = set(labels["id"][labels["label_source"] == "human"]) | set(audit["id"])
    assert set(curated.index[curated["label_source"] == "human"]) == human
    truth = corpus.set_index("id")["truth"]
    chosen_a = curated["chosen"] == corpus.set_index("id")["response_a"].reindex(curated.index)
    label = chosen_a.map({True: "a", False: "b"})
    assert (label[list(human)] == truth[list(human)]).all()
    rest = curated.index[curated["label_source"] != "human"]
    by_length, ai = length_label(corpus)[rest], ai_labels.set_index("id")["ai_label"][rest]
    if policy == "rm":
        assert (label[rest] == by_length).all()
    if policy == "ai":
        assert (label[rest] == ai).all()
    # the length reward (95% right) beats the AI labels (65%): auto follows it where they disagree
    if policy == "auto":
        assert summary["curation"]["replaced"] > 0.5 * (by_length != ai).sum()
    # the interval of a rule fitted on the audit is widened by the curation's bootstrap; a fixed rule's is not
    assert summary["estimate"]["curated"]["bootstrap_draws"] == (400 if policy == "auto" else 0)
    for name in ("ai", "rm", "curated"):
        e = summary["estimate"][name]
        assert e["low"] <= e["value"] <= e["high"]
    assert summary["audit_pairs"] == 60 and summary["human_labels"] == 64
    assert summary["estimate"]["curated"]["low"] <= summary["curated_label_acc"] <= summary["estimate"]["curated"]["high"]
