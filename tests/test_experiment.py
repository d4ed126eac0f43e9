"""`rlthf experiment`: the aggregation (means, spreads, ROI, the headline) on made-up results with exact answers,
the config checks, and one tiny real run of two methods."""
import json
from pathlib import Path

import pytest

from rlthf.config import ConfigError
from rlthf.studies.experiment import (ExperimentConfig, budget_rows, budget_table, headline, load_experiment, reaches,
                                      run_experiment, summary_rows, write_report)

REPO = Path(__file__).resolve().parents[1]
REF = {"ai_only": "AI-only", "random": "Random", "human": "Human", "rlthf": "RLTHF"}


def fake_run(method, seed, points, wall=10.0):
    """points: (human % corpus, test acc) per iteration."""
    rows = [{"iteration": i, "human_labels": int(10 * pct), "human_pct_corpus": pct, "human_pct_shard": 4 * pct,
             "label_acc": 0.75 + pct / 100, "test_acc": acc} for i, (pct, acc) in enumerate(points)]
    return {"method": method, "seed": seed, "wall_s": wall, "summary": {"curated_label_acc": points[-1][1]},
            "rows": rows}


def fake_results():
    runs = [fake_run("AI-only", 0, [(0, 0.80)]), fake_run("AI-only", 1, [(0, 0.82)]),
            fake_run("Random", 0, [(0, 0.80), (2, 0.80), (4, 0.81)]), fake_run("Random", 1, [(0, 0.82), (2, 0.82), (4, 0.83)]),
            fake_run("RLTHF", 0, [(0, 0.80), (2, 0.84), (4, 0.88)]), fake_run("RLTHF", 1, [(0, 0.82), (2, 0.86), (4, 0.86)]),
            fake_run("Human", 0, [(0, 0.80), (25, 0.85)]), fake_run("Human", 1, [(0, 0.82), (25, 0.87)])]
    return {f"{r['method']}_seed{r['seed']}": r for r in runs}


def test_summary_rows_give_means_spreads_and_roi_over_random():
    rows = {r["method"]: r for r in summary_rows(fake_results(), ["AI-only", "Random", "RLTHF", "Human"], REF)}
    assert rows["RLTHF"]["test_acc"] == pytest.approx((0.87, 0.0141421356))  # mean, sample std of 0.88 and 0.86
    assert rows["Random"]["roi"] == pytest.approx((0.25, 0.0))  # +1 point per 4% of the corpus, both seeds
    assert rows["RLTHF"]["roi"] == pytest.approx((1.5, 0.7071067812))  # +8/4 and +4/4 points per 1%
    assert rows["RLTHF"]["roi_over_random"] == pytest.approx(6.0)
    assert rows["AI-only"]["roi"] is None and rows["AI-only"]["roi_over_random"] is None
    assert rows["Human"]["roi"] == pytest.approx((0.2, 0.0))
    assert rows["RLTHF"]["seeds"] == [0, 1] and rows["RLTHF"]["wall_s"] == (10.0, 0.0)
    assert rows["RLTHF"]["reaches_human"] == 4.0 and rows["Random"]["reaches_human"] is None
    assert rows["Human"]["reaches_human"] == 25.0
    assert rows["Random"]["vs_rlthf"] == pytest.approx((-0.05, 0.0282842712))  # -7 and -3 points


def test_headline_is_the_first_budget_where_the_mean_reaches_human():
    results = fake_results()
    h = headline(results, REF)
    assert h["human_test_acc"] == pytest.approx(0.86)
    assert h["rlthf_reaches_human_at_pct"] == 4.0  # mean 0.85 at 2%, 0.87 at 4%
    assert h["random_reaches_human_at_pct"] is None
    assert h["rlthf_roi_over_random"] == pytest.approx(6.0)
    assert reaches([results["RLTHF_seed0"]], 0.84) == 2.0


def test_report_has_every_group_its_figures_and_every_run(tmp_path):
    config = ExperimentConfig(output_dir=str(tmp_path), seeds=[0, 1],
                              methods={m: [] for m in REF.values()},
                              groups={"baselines": ["AI-only", "Random", "RLTHF", "Human"], "two": ["RLTHF", "Human"]})
    report = write_report(config, fake_results()).read_text()
    assert "RLTHF reaches it at 4.00% of the corpus human-labelled; Random does not reach it within" in report
    assert "| RLTHF | 2 | 40 | 4.00 | 79.0% ± 0.0 | 87.0% ± 1.4 | 87.0% ± 1.4 | +0.0 ± 0.0 | +1.50 ± 0.71 | 6.0x | 4.00 | 10 |" in report
    for png in ("baselines_test_acc.png", "baselines_label_acc.png", "two_test_acc.png"):
        assert f"]({png})" in report and (tmp_path / png).stat().st_size > 10_000
    assert report.count("| RLTHF | ") == 2 + 1 + 2  # a row in each group's table, under Methods, per seed under Runs


def test_experiment_config_errors_name_the_method_or_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(f"base: {REPO / 'configs/demo.yaml'}\nmethods:\n  RLTHF: []\n  Bad: [selection.alpha=3]\n"
                    "reference: {rlthf: RLTHF}\n")
    with pytest.raises(ConfigError, match=r"^methods.Bad: selection.alpha: unknown key"):
        load_experiment(path)
    path.write_text(f"base: {REPO / 'configs/demo.yaml'}\nmethods:\n  RLTHF: []\ngroups:\n  g: [RLTHF, Nope]\n"
                    "reference: {rlthf: RLTHF}\n")
    with pytest.raises(ConfigError, match=r"^groups.g: unknown method 'Nope'"):
        load_experiment(path)
    path.write_text(f"base: {REPO / 'configs/demo.yaml'}\nbase_overrides: [reward.heads=2]\nmethods:\n  RLTHF: []\n"
                    "reference: {rlthf: RLTHF}\n")
    with pytest.raises(ConfigError, match=r"^base_overrides: reward.heads: unknown key"):
        load_experiment(path)


def test_the_shipped_experiment_config_loads():
    config = load_experiment(REPO / "configs/experiment_hh_rlhf.yaml")
    assert len(config.seeds) >= 3 and {"RLTHF", "Random", "QBC", "Confident learning", "Shard 1/8"} <= set(config.methods)


def test_a_tiny_experiment_runs_two_methods_and_resumes(ray_local, hh_rlhf_path, embedding_cache, tmp_path):
    common = [f"data.path={hh_rlhf_path}", "data.max_pairs=300", f"reward.cache_dir={embedding_cache}",
              "selection.iterations=1", "selection.annotation_fraction=0.1"]
    config = ExperimentConfig(base=str(REPO / "configs/demo.yaml"), output_dir=str(tmp_path), seeds=[0],
                              base_overrides=common,  # a method's own override wins: AI-only runs no iteration
                              methods={"AI-only": ["selection.iterations=0"],
                                       "Confident learning": ["selection.selector=confident_learning",
                                                              "selection.committee_size=3"]},
                              reference={"ai_only": "AI-only", "rlthf": "Confident learning"})
    results = run_experiment(config, echo=lambda _: None)
    cl = results["Confident learning_seed0"]
    assert [r["iteration"] for r in cl["rows"]] == [0, 1]
    assert [r["iteration"] for r in results["AI-only_seed0"]["rows"]] == [0]
    assert cl["rows"][1]["human_labels"] == cl["rows"][0]["human_labels"] + 6  # 10% of the 60-pair shard
    selection = json.loads((tmp_path / "runs/Confident learning_seed0/iterations/iter_1/selection.json").read_text())
    assert selection["annotated"] == 6 and selection["analysis"]["method"] in ("derivative", "sign")
    assert (tmp_path / "report.md").exists()
    again = run_experiment(config, echo=lambda _: None)  # everything is in results.json: nothing reruns
    assert again["Confident learning_seed0"]["wall_s"] == cl["wall_s"]


def test_no_ratio_to_a_random_roi_that_is_noise():
    results = fake_results()
    results["Random_seed0"] = fake_run("Random", 0, [(0, 0.80), (4, 0.79)])  # -0.25 and +0.25 points per 1%
    rows = {r["method"]: r for r in summary_rows(results, ["Random", "RLTHF"], REF)}
    assert rows["Random"]["roi"] == pytest.approx((0.0, 0.3535533906))
    assert rows["RLTHF"]["roi"] == pytest.approx((1.5, 0.7071067812)) and rows["RLTHF"]["roi_over_random"] is None
    assert headline(results, REF)["rlthf_roi_over_random"] is None


# budgets: every method at every budget, one table per budget with paired gains

def budget_run(method, seed, curated, asked=(0, 0), audit=None):
    summary = {"curated_label_acc": curated}
    if audit:  # (low, high) of the audit's curated estimate, and the AI labels' accuracy
        summary |= {"estimate": {"curated": {"low": audit[0], "high": audit[1]}}, "ai_label_acc_corpus": audit[2],
                    "curated_label_acc_where_ai": curated}
    return {"method": method, "seed": seed, "wall_s": 1.0, "summary": summary,
            "rows": [{"iteration": 0, "test_acc": 0.6, "asked": 5, "batch_was_wrong": 0},
                     {"iteration": 1, "test_acc": 0.7, "asked": asked[0], "batch_was_wrong": asked[1]}]}


def test_methods_expand_per_budget_except_the_budget_free():
    config = ExperimentConfig(seeds=[0], budgets=["5%", "10%"], methods={"Oracle": ["selection.selector=oracle"]},
                              reference={"ai_only": "AI-only", "random": "Random", "rlthf": "RLTHF"})
    assert list(config.methods) == ["AI-only", "Random @ 5%", "Random @ 10%", "RLTHF @ 5%", "RLTHF @ 10%",
                                    "Oracle @ 5%", "Oracle @ 10%"]
    assert config.methods["Oracle @ 10%"] == ["selection.selector=oracle", "annotation.budget=10%",
                                              "selection.spread_budget=true"]
    with pytest.raises(ConfigError, match=r"^budgets: a budget is a share like '10%'; got '7'"):
        ExperimentConfig(budgets=["7"], methods={"X": []})


def test_budget_rows_pair_gains_by_seed_and_compare_them_to_randoms():
    config = ExperimentConfig(seeds=[0, 1], budgets=["10%"], methods={},
                              reference={"ai_only": "AI-only", "random": "Random", "rlthf": "RLTHF"})
    runs = [budget_run("AI-only", 0, 0.70), budget_run("AI-only", 1, 0.72),
            budget_run("Random @ 10%", 0, 0.72, (10, 3)), budget_run("Random @ 10%", 1, 0.74, (10, 3)),
            budget_run("RLTHF @ 10%", 0, 0.75, (10, 6)), budget_run("RLTHF @ 10%", 1, 0.79, (10, 5))]
    rows = {r["method"]: r for r in budget_rows({f"{r['method']}{r['seed']}": r for r in runs}, config, "10%")}
    assert rows["RLTHF"]["gain"][0] == pytest.approx(0.06)  # +5 and +7 points over the same seed's AI-only
    assert rows["RLTHF"]["vs_random"] == pytest.approx(3.0)  # Random gains +2 points on both seeds
    assert rows["RLTHF"]["asked_wrong"][0] == pytest.approx(0.55) and rows["Random"]["asked_wrong"][0] == 0.3
    assert rows["Random"]["vs_rlthf"][0] == pytest.approx(-0.04)
    assert rows["AI-only"]["curated"][0] == pytest.approx(0.71) and rows["AI-only"]["asked_wrong"] is None


def test_budget_rows_compare_a_method_to_randoms_gain_on_the_same_seeds():
    config = ExperimentConfig(seeds=[0, 1], budgets=["10%"], methods={},
                              reference={"ai_only": "AI-only", "random": "Random", "rlthf": "RLTHF"})
    runs = [budget_run("AI-only", 0, 0.70), budget_run("AI-only", 1, 0.70),
            budget_run("Random @ 10%", 0, 0.72), budget_run("Random @ 10%", 1, 0.76),  # +2 and +6 points
            budget_run("RLTHF @ 10%", 0, 0.76)]  # seed 0 only: +6 against Random's +2 there, not its mean +4
    rows = {r["method"]: r for r in budget_rows({f"{r['method']}{r['seed']}": r for r in runs}, config, "10%")}
    assert rows["RLTHF"]["vs_random"] == pytest.approx(3.0) and rows["Random"]["vs_random"] == pytest.approx(1.0)


def test_budget_rows_count_the_seeds_where_the_audit_held_the_truth_and_curation_kept_up_with_the_ai():
    config = ExperimentConfig(seeds=[0, 1, 2], budgets=["10%"], methods={},
                              reference={"ai_only": "AI-only", "random": "Random", "rlthf": "RLTHF"})
    runs = [budget_run("AI-only", s, 0.70) for s in range(3)]
    runs += [budget_run("RLTHF @ 10%", 0, 0.75, audit=(0.70, 0.80, 0.72)),   # held, above the AI
             budget_run("RLTHF @ 10%", 1, 0.75, audit=(0.76, 0.90, 0.75)),   # missed, equal counts as not below
             budget_run("RLTHF @ 10%", 2, 0.71, audit=(0.60, 0.71, 0.73))]   # held (edge), below the AI
    rows = {r["method"]: r for r in budget_rows({f"{r['method']}{r['seed']}": r for r in runs}, config, "10%")}
    assert rows["RLTHF"]["audit_covers"] == (2, 3) and rows["RLTHF"]["not_below_ai"] == (2, 3)
    assert rows["AI-only"]["audit_covers"] is None and rows["AI-only"]["not_below_ai"] is None
    assert "| 2/3 | 2/3 |" in budget_table(list(rows.values()))


def test_budget_rows_pair_each_reward_model_with_the_same_seeds_all_human_one():
    config = ExperimentConfig(seeds=[0, 1], budgets=["10%"], methods={}, budget_free=["AI-only", "Human"],
                              reference={"ai_only": "AI-only", "random": "Random", "rlthf": "RLTHF", "human": "Human"})
    human = [budget_run("Human", s, 1.0) for s in (0, 1)]
    for run, acc in zip(human, (0.74, 0.70)):
        run["rows"][-1]["test_acc"] = acc
    runs = human + [budget_run("AI-only", s, 0.70) for s in (0, 1)] + [budget_run("RLTHF @ 10%", s, 0.75) for s in (0, 1)]
    rows = {r["method"]: r for r in budget_rows({f"{r['method']}{r['seed']}": r for r in runs}, config, "10%")}
    assert rows["RLTHF"]["test_vs_human"][0] == pytest.approx(-0.02)  # 0.70 - 0.74 and 0.70 - 0.70
    assert rows["Human"]["test_vs_human"][:2] == (0.0, 0.0)
