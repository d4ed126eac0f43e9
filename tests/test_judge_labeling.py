"""How verdicts in both orders become one label per pair, and the report (exact, no Ray, no model)."""
import numpy as np
import pandas as pd
import pytest

from rlthf.config import JudgeConfig
from rlthf.judges.labeling import aggregate_verdicts, backend_class, judge_report

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
    labels = aggregate_verdicts(pairs["id"].tolist(), VERDICTS)
    config = JudgeConfig(prompt_price_per_1m=1.0, completion_price_per_1m=4.0)
    report = judge_report(pairs, labels, VERDICTS, config, asked=12, seconds=1.5)
    assert report["parse_failures"] == 2 and report["errors"] == 1
    assert report["position_consistency"] == pytest.approx(2 / 4)
    assert report["labelled"] == 4
    assert report["accuracy"] == pytest.approx(3 / 4) and report["accuracy_pairs"] == 4  # swap is wrong
    assert report["prompt_tokens"] == 120 and report["completion_tokens"] == 24
    assert report["cost"] == pytest.approx((120 * 1.0 + 24 * 4.0) / 1e6)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="no Ray Data callable class"):
        backend_class("vllm")
