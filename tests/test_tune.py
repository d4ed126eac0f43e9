"""`rlthf tune`: how a trial's config is built from the sampled schedule (exact), the settings checks, and one
short real sweep (2 trials on a 200-pair corpus) on the session's Ray."""
from pathlib import Path

import pandas as pd
import pytest

from rlthf.config import ConfigError, load_config
from rlthf.studies.tune import TuneSettings, load_tune, run_tune, trial_config

REPO = Path(__file__).resolve().parents[1]


def test_a_trial_spends_the_budget_in_batches_with_decayed_schedules():
    params = {"budget_fraction": 0.19, "batch": 0.038, "alpha_start": 8.0, "alpha_decay": 0.5, "alpha_floor": 1.5,
              "beta_start": 0.6, "beta_decay": 0.5, "beta_floor": 0.1}
    config = trial_config(load_config(REPO / "configs/demo.yaml").to_dict(), params, "/tmp/trial")
    s = config.selection
    assert (s.iterations, s.annotation_fraction, config.output_dir) == (5, 0.038, "/tmp/trial")
    assert s.amplification == [8.0, 4.0, 2.0, 1.5, 1.5]
    assert s.backoff == [0.6, 0.3, 0.15, 0.1, 0.1]
    assert trial_config(config.to_dict(), params | {"batch": 0.076}, "x").selection.iterations == 2  # round(2.5)


def test_tune_settings_are_checked_with_their_names(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(f"base: {REPO / 'configs/demo.yaml'}\nbeta_start: [0.5, 1.0]\n")
    with pytest.raises(ConfigError, match=r"^beta_start: must stay below 1"):
        load_tune(path)
    path.write_text(f"base: {REPO / 'configs/demo.yaml'}\noverrides: [selection.alpha=2]\n")
    with pytest.raises(ConfigError, match=r"^selection.alpha: unknown key"):
        load_tune(path)
    assert load_tune(REPO / "configs/tune_demo.yaml").num_samples >= 8


def test_a_short_sweep_reports_every_iteration_and_writes_the_best_schedule(ray_local, hh_rlhf_path,
                                                                             embedding_cache, tmp_path):
    settings = TuneSettings(base=str(REPO / "configs/demo.yaml"), output_dir=str(tmp_path),
                            overrides=[f"data.path={hh_rlhf_path}", "data.max_pairs=200",
                                       f"reward.cache_dir={embedding_cache}"],
                            num_samples=2, max_concurrent_trials=1, budget_fraction=0.1, batch_fractions=[0.1],
                            grace_pct=20.0)
    out = run_tune(settings, echo=lambda _: None)
    rows = out["rows"]
    assert out["errors"] == 0 and len(rows) == 2
    for row in rows:  # a 40-pair shard (whole prompts): 5 eyes-off labels, then round(0.1 * 40) = 4 per iteration
        assert row["iterations"] == row["iterations_run"] == 1 and row["params"]["batch"] == 0.1
        assert row["human_pct_shard"] == pytest.approx(100 * (5 + 4 * row["iterations_run"]) / 40)
    best = load_config(tmp_path / "best_config.yaml")
    p = out["best"]["params"]
    # the schedule starts at beta_start, or at the floor when the sampled floor lies above it
    assert best.selection.iterations == 1
    assert best.selection.backoff[0] == round(max(p["beta_start"], p["beta_floor"]), 4)
    table = (tmp_path / "results.md").read_text()
    assert table.count("| best |") == 1 and out["best"]["trial_id"] in table
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2
