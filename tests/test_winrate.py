"""Win rate: the ranking parser (hostile answers included), the vote counting, the templates and the log-prob judge."""
from __future__ import annotations

import pandas as pd
import pytest

from rlthf.config import JudgeConfig, WinRateConfig, load_config
from rlthf.judges.parse import parse_ranking
from rlthf.policy.winrate import RANKING_SYSTEM, TEMPLATES, ranking_requests, win_rate

RANK_1_FIRST = "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"


@pytest.mark.parametrize("answer, first", [
    (RANK_1_FIRST, "model_1"),
    ("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", "model_2"),
    ("[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]", "model_2"),
    ('[{"model": "model_2", "rank": 1}, {"model": "model_1", "rank": 2}]', "model_2"),  # JSON
    ("```python\n" + RANK_1_FIRST + "\n```", "model_1"),
    ("  \n" + RANK_1_FIRST + "\n", "model_1"),
])
def test_reads_a_ranking(answer, first):
    assert parse_ranking(answer) == first


@pytest.mark.parametrize("answer", [
    "__import__('os').system('touch /tmp/rlthf-pwned')",
    "[{'model': __import__('os').system('touch /tmp/rlthf-pwned'), 'rank': 1}, {'model': 'model_2', 'rank': 2}]",
    "(lambda: [{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}])()",
    "open('/etc/passwd').read()",
    "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]; import os",
    "[" * 100_000 + "]" * 100_000,  # nesting bomb: refused before parsing (and by length)
    "[" * 50 + "]" * 50,  # deep but short: refused by the nesting bound
    "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}, " + "'x', " * 1000 + "]",  # too long
    "[{'model': 'model_1', 'rank': " + "9" * 5000 + "}, {'model': 'model_2', 'rank': 2}]",  # huge integer
    "[{'model': 'model_1', 'rank': 10**10}, {'model': 'model_2', 'rank': 2}]",  # an expression, not a literal
    "[{'model': 'model_1', 'rank': 1}, {'model': 'model_1', 'rank': 2}]",  # one model twice
    "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 1}]",  # a tie is no ranking
    "[{'model': 'model_1', 'rank': True}, {'model': 'model_2', 'rank': 2}]",  # True == 1, but not a rank
    "[{'model': 'model_1', 'rank': 1.0}, {'model': 'model_2', 'rank': 2}]",
    "[{'model': 'model_1', 'rank': 1}]",
    "[{'model': 'model_1', 'rank': 1, 'why': 'x'}, {'model': 'model_2', 'rank': 2}]",
    "{'model_1': 1, 'model_2': 2}",
    "Model 1 is better. " + RANK_1_FIRST,  # prose around the literal
    "model_1",
    "",
    "   ",
    None,
])
def test_anything_else_is_a_parse_failure(answer):
    assert parse_ranking(answer) is None


def test_hostile_answers_run_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    assert parse_ranking(f"__import__('os').system('touch {marker}')") is None
    assert parse_ranking(f"[{{'model': __import__('pathlib').Path('{marker}').touch(), 'rank': 1}}]") is None
    assert not marker.exists()


def test_max_chars_bounds_the_answer():
    assert parse_ranking(RANK_1_FIRST, max_chars=len(RANK_1_FIRST)) == "model_1"
    assert parse_ranking(RANK_1_FIRST, max_chars=len(RANK_1_FIRST) - 1) is None


def verdicts(rows):
    return pd.DataFrame(rows, columns=["pair_id", "order", "first"])


def test_win_rate_counts_wins_losses_ties_and_failures():
    # order ab: the policy is model_1; ba: the policy is model_2
    result = win_rate(verdicts([
        ("win", "ab", "model_1"), ("win", "ba", "model_2"),
        ("loss", "ab", "model_2"), ("loss", "ba", "model_1"),
        ("tie", "ab", "model_1"), ("tie", "ba", "model_1"),  # position bias: model_1 both times
        ("single", "ab", ""), ("single", "ba", "model_2"),  # one readable verdict decides alone: a win
        ("failed", "ab", ""), ("failed", "ba", ""),
    ]))
    assert (result["wins"], result["losses"], result["ties"], result["failures"]) == (2, 1, 1, 1)
    assert result["judged"] == 4 and result["prompts"] == 5 and result["parse_failures"] == 3
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    lo, hi = result["ci"]
    assert lo < result["win_rate"] < hi


def test_a_judge_with_pure_position_bias_gives_ties_and_one_half():
    rows = [(f"p{i}", order, "model_1") for i in range(20) for order in ("ab", "ba")]
    result = win_rate(verdicts(rows))
    assert result["ties"] == 20 and result["win_rate"] == 0.5


def test_templates_follow_appendix_d_and_put_the_policy_in_both_positions():
    prompts = pd.DataFrame({"prompt_id": ["p"], "prompt": ["\n\nHuman: How do I bake bread?\n\nAssistant:"]})
    policy = pd.DataFrame({"prompt_id": ["p"], "response": ["POLICY ANSWER"]})
    reference = pd.DataFrame({"prompt_id": ["p"], "response": ["REFERENCE ANSWER"]})
    requests = ranking_requests(prompts, policy, reference, "hh_rlhf").set_index("order")
    ab, ba = requests.loc["ab", "user"], requests.loc["ba", "user"]
    assert ab.index("POLICY ANSWER") < ab.index("REFERENCE ANSWER")
    assert ba.index("REFERENCE ANSWER") < ba.index("POLICY ANSWER")
    assert "more helpful and harmless while being as concise as possible" in ab
    assert "How do I bake bread?" in ab and requests.loc["ab", "system"] == RANKING_SYSTEM
    assert "{'model': <model-name>, 'rank': <model-rank>}" in ab
    assert '"post": "' in TEMPLATES["tldr"].format(instruction="x", output_1="a", output_2="b")


def test_config_sections_fail_with_their_dotted_key():
    from rlthf.config import ConfigError

    with pytest.raises(ConfigError, match="winrate.num_prompts"):
        load_config(None, ["winrate.num_prompts=0"])
    with pytest.raises(ConfigError, match="dpo.beta"):
        load_config(None, ["dpo.beta=0"])
    with pytest.raises(ConfigError, match="downstream.methods"):
        load_config(None, ["downstream.methods=[rlthf, gpt5]"])
    assert load_config("configs/downstream.yaml").winrate == WinRateConfig(
        num_prompts=8, max_prompt_length=64, max_new_tokens=24, batch_size=8)


def test_logprob_ranking_judge_on_a_plain_batch_reads_the_rank_token():
    from rlthf.policy.winrate import RankingJudge

    judge = RankingJudge(JudgeConfig(mode="logprob"))
    prompts = pd.DataFrame({"prompt_id": ["p"], "prompt": ["\n\nHuman: What is 2 + 2?\n\nAssistant:"]})
    good = pd.DataFrame({"prompt_id": ["p"], "response": ["2 + 2 = 4."]})
    bad = pd.DataFrame({"prompt_id": ["p"], "response": ["I hate you."]})
    requests = ranking_requests(prompts, good, bad, "hh_rlhf")
    out = judge({k: requests[k].to_numpy() for k in requests.columns})
    assert list(out["key"]) == list(requests["key"])
    assert set(out["first"]) <= {"model_1", "model_2"} and all(e == "" for e in out["error"])
    assert all(r.startswith("logprob 1=") for r in out["raw"])
    tokens = [judge.backend.tokenizer.decode([t]) for t in judge.rank_tokens]
    assert [t.strip() for t in tokens] == ["1", "2"]
