"""A small whole run on real judge labels (vicuna80-judged: GPT-4's verdicts in both orders, human truth): the AI
labels come from the data's columns, no question crosses the test split, the audit estimates what the curated
data is worth, and the default curation ships nothing worse than the judge's labels."""
import gzip
import json

import pandas as pd

import rlthf.run.driver
from rlthf.cli import main
from rlthf.config import DEFAULT_RUN_CONFIG, load_config
from rlthf.run.driver import run
from tests.conftest import REPO


def test_rlthf_run_without_a_config_runs_on_gpt4_labels(monkeypatch):
    ran = []
    monkeypatch.setattr(rlthf.run.driver, "run", lambda config, **_: ran.append(config))
    assert main(["run", "--set", "selection.iterations=2"]) == 0
    assert ran == [load_config(DEFAULT_RUN_CONFIG, ["selection.iterations=2"])]
    assert ran[0].ai_labels.source == "column" and ran[0].data.path.endswith("vicuna80-judged/pairs.jsonl.gz")
    assert (REPO / "configs/vicuna80.yaml").resolve() == DEFAULT_RUN_CONFIG.resolve()  # one file, two names


def with_judge_margins(source, target, count: int) -> None:
    """The first ``count`` records of ``source`` with a ``judge_margin`` column, as a user who kept GPT-4's
    log-probabilities would have one (vicuna80 has none: a made-up margin from the question and the models)."""
    with gzip.open(source, "rt") as lines, gzip.open(target, "wt") as out:
        for _, line in zip(range(count), lines):
            record = json.loads(line)
            sign = {"a": 1.0, "b": -1.0}.get(record["judge_label"], 0.0)
            record["judge_margin"] = sign * (record["question_id"] % 7) / 2 if record["question_id"] % 5 else None
            out.write(json.dumps(record) + "\n")


def test_a_run_on_gpt4_labels_from_columns(ray_local, vicuna80_path, embedding_cache, tmp_path):
    # the embedded default (rlthf run with no --config), made small; the judge's margins from a column order the
    # human batches inside the curve's region
    with_judge_margins(vicuna80_path, tmp_path / "pairs.jsonl.gz", 450)
    config = load_config(DEFAULT_RUN_CONFIG, [
        f"output_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'pairs.jsonl.gz'}",
        f"reward.cache_dir={embedding_cache}", "reward.max_length=128",  # cheap features: the labels are tested
        "selection.iterations=2", "annotation.audit_fraction=0.1",
        "ai_labels.margin_column=judge_margin", "selection.judge_signal=least_confident_first"])
    result = run(config, echo=lambda _: None)
    pairs = pd.read_parquet(tmp_path / "run/data/pairs.parquet")
    by_question = pairs.groupby("question_id")["split"].nunique()
    assert (by_question == 1).all() and pairs["split"].eq("test").any()  # no question on both sides
    ai = pd.read_parquet(tmp_path / "run/data/ai_labels.parquet").set_index("id")
    corpus = pairs[pairs["split"] == "train"].set_index("id")
    both = corpus["judge_label"].eq(corpus["judge_label_swapped"])
    # where GPT-4's two orders agree, its label is the AI label; where they disagree it gave none
    assert (ai["ai_label"][both[both].index] == corpus["judge_label"][both]).all()
    disagree = corpus["judge_label"].isin(["a", "b"]) & corpus["judge_label_swapped"].isin(["a", "b"]) & ~both
    assert ai["ai_label"][disagree[disagree].index].isna().all()
    assert set(ai["ai_confidence"][disagree[disagree].index]) == {"inconsistent"}
    margin = pd.to_numeric(corpus["judge_margin"])
    assert ai["ai_judge_margin"][corpus.index].equals(margin.rename("ai_judge_margin")) and margin.isna().any()
    s = result.summary
    # the audit wants 10% of the corpus, and takes at most half the budget (10% of the corpus)
    assert s["audit_pairs"] == min(-(-len(corpus) // 10), len(corpus) // 10 // 2)
    for name in ("ai", "rm", "curated"):
        assert 0 <= s["estimate"][name]["low"] <= s["estimate"][name]["value"] <= s["estimate"][name]["high"] <= 1
    assert s["curation"]["policy"] == "auto"
    # never worse than the judge's labels, on the pairs the judge labelled (the others carry model 0's label)
    assert s["curated_label_acc_where_ai"] >= s["ai_label_acc_corpus"]
    # the shard is the whole corpus here; reward model 0 labelled every pair GPT-4 left without a label
    assert result.metrics[0]["ai_unlabelled"] == int(ai["ai_label"].isna().sum()) > 0
