"""How verdicts in both orders become one label per pair, and the report (exact, no Ray, no model)."""
import numpy as np
import pandas as pd
import pytest

from rlthf.cluster.actors import actor_cpus
from rlthf.config import JudgeConfig
from rlthf.judges.labeling import LabelsFile, aggregate_verdicts, backend_class, judge_report, label_tally

NAN = float("nan")


def verdict(pair, order, preference, lp_a=NAN, lp_b=NAN, error="", retryable=False):
    return {"key": f"{pair}|{order}", "pair_id": pair, "order": order, "preference": preference, "raw": "",
            "logprob_a": lp_a, "logprob_b": lp_b, "prompt_tokens": 10, "completion_tokens": 2, "error": error,
            "retryable": retryable}


VERDICTS = pd.DataFrame([
    verdict("agree", "ab", "A"), verdict("agree", "ba", "B"),              # a both times: consistent
    verdict("swap", "ab", "B"), verdict("swap", "ba", "A"),                # b both times: consistent
    verdict("bias", "ab", "A"), verdict("bias", "ba", "A"),                # always "A": position bias, no logprobs
    verdict("lp", "ab", "A", -0.1, -2.0), verdict("lp", "ba", "A", -0.5, -1.0),  # margin 1.9 - 0.5 > 0: a
    verdict("half", "ab", "", error="unparseable answer"), verdict("half", "ba", "A"),  # single: b
    verdict("none", "ab", "", error="APIStatusError: 503", retryable=True),
    verdict("none", "ba", "", error="unparseable answer"),
])


def test_each_rule_gives_the_documented_label():
    labels = aggregate_verdicts(["agree", "swap", "bias", "lp", "half", "none"], VERDICTS).set_index("id")
    assert labels["label"].tolist() == ["a", "b", None, "a", "b", None]
    assert labels["confidence"].tolist() == ["consistent", "consistent", "inconsistent", "inconsistent", "single",
                                             "failed"]
    assert labels.loc["lp", "logprob_margin"] == pytest.approx(1.9 - 0.5)
    assert np.isnan(labels.loc["bias", "logprob_margin"])
    assert labels.loc["half", "error_ab"] == "unparseable answer"


def test_one_order_only_gives_single_labels():
    one = pd.DataFrame([verdict("p", "ab", "B")])
    labels = aggregate_verdicts(["p"], one)
    assert labels.loc[0, "label"] == "b" and labels.loc[0, "confidence"] == "single"
    assert labels.loc[0, "error_ba"] == "not asked"


def test_report_counts_failures_consistency_tokens_cost_and_accuracy():
    pairs = pd.DataFrame({"id": ["agree", "swap", "bias", "lp", "half", "none"],
                          "human_label": ["a", "a", "b", "a", "b", "a"]})
    labels = aggregate_verdicts(pairs["id"].tolist(), VERDICTS).assign(human_label=pairs["human_label"])
    config = JudgeConfig(prompt_price_per_1m=1.0, completion_price_per_1m=4.0)
    # counted in two batches, as label_pairs counts the batches that stream back
    tally = label_tally(labels.iloc[:2])
    tally.update(label_tally(labels.iloc[2:]))
    report = judge_report(tally, config, asked=9, seconds=1.5)
    assert report["pairs"] == 6 and report["requests"] == 12 and report["from_cache"] == 3
    assert report["confidence"] == {"consistent": 2, "inconsistent": 2, "single": 1, "failed": 1}
    assert report["parse_failures"] == 2 and report["errors"] == 1
    assert report["position_consistency"] == pytest.approx(2 / 4)
    assert report["labelled"] == 4
    assert report["accuracy"] == pytest.approx(3 / 4) and report["accuracy_pairs"] == 4  # swap is wrong
    # the transient failure (none|ab) is not served: its tokens are not counted
    assert report["prompt_tokens"] == 110 and report["completion_tokens"] == 22
    assert report["cost"] == pytest.approx((110 * 1.0 + 22 * 4.0) / 1e6)
    assert "accuracy" not in judge_report(label_tally(labels.drop(columns="human_label")), config, asked=0,
                                          seconds=0.0)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="no Ray Data callable class"):
        backend_class("vllm")


def test_requests_of_the_wanted_keys_only():
    import pyarrow as pa

    from rlthf.judges.labeling import request_rows, verdict_keys

    config = JudgeConfig(both_orders=True)
    pairs = pd.DataFrame({"id": ["p1", "p2", "p3"], "prompt": ["q"] * 3, "response_a": ["x"] * 3,
                          "response_b": ["y"] * 3})
    assert request_rows(pairs, config, "t")["key"].tolist() == ["p1|ab", "p1|ba", "p2|ab", "p2|ba", "p3|ab", "p3|ba"]
    wanted = pa.array([verdict_keys(["p2"], "ba", config, "t")[0], verdict_keys(["p3"], "ab", config, "t")[0]])
    asked = request_rows(pairs, config, "t", wanted)
    assert asked["key"].tolist() == ["p2|ba", "p3|ab"] and asked["user"].str.contains("Response A: y").tolist() == [
        True, False]  # the swapped order shows response_b first
    assert request_rows(pairs, config, "t", pa.array([], pa.string())).empty


def test_an_actor_pool_never_holds_every_cpu_of_a_small_cluster():
    assert actor_cpus(1, 2, 2.0) == 1.0  # the demo judge on this machine: one CPU left to the tasks feeding it
    assert actor_cpus(2, 1, 2.0) == 0.5 and actor_cpus(4, 1, 3.0) == 0.5
    assert actor_cpus(1, 2, 16.0) == 2 and actor_cpus(3, 2, 8.0) == 2  # room to spare: as asked
    assert actor_cpus(1, 1, 1.0) == 1  # a one-CPU cluster has nothing to leave


def test_the_labels_file_reads_back_the_same_whatever_string_dtype_the_first_batch_had(tmp_path):
    def batch(ids, labels, dtype):
        return pd.DataFrame({"id": pd.Series(ids, dtype=dtype), "label": pd.Series(labels, dtype=dtype),
                             "confidence": pd.Series(["single"] * len(ids), dtype=dtype),
                             "logprob_margin": np.full(len(ids), np.nan)})

    read = []
    for first, then in (("string[pyarrow]", object), (object, "str"), ("str", "string[pyarrow]")):
        path = tmp_path / f"{first}.parquet"
        with LabelsFile(path) as out:  # Ray Data hands blocks over with any of these
            out.write(batch(["x", "y"], ["a", None], first))
            out.write(batch(["z"], [None], then))
        read.append(pd.read_parquet(path))
    assert all(frame.equals(read[0]) for frame in read) and read[0]["label"].isna().tolist() == [False, True, True]
