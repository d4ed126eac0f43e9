"""The downstream table's label sets: the same split, shard, labels and seed, differing only where the paper's
baselines differ (appendix C.3)."""
from pathlib import Path

from rlthf.config import load_config
from rlthf.studies.baselines import BASELINE_OVERRIDES
from rlthf.studies.downstream import method_config
from tests.conftest import REPO


def test_label_sets_differ_only_in_selection_and_annotation():
    base = load_config(REPO / "configs/downstream.yaml")
    configs = {m: method_config(base, m, Path(f"/tmp/x/{m}")) for m in BASELINE_OVERRIDES}
    assert configs["rlthf"].selection == base.selection and configs["rlthf"].output_dir == "/tmp/x/rlthf"
    assert configs["ai_only"].selection.iterations == 0 and configs["ai_only"].annotation.eyes_off_min == 0
    assert configs["random"].selection.selector == "random"
    assert configs["random"].selection.iterations == base.selection.iterations  # the same human budget as RLTHF
    assert configs["human"].selection.annotation_fraction == 1.0
    for config in configs.values():
        assert (config.seed, config.data, config.ai_labels, config.reward, config.dpo, config.winrate) == (
            base.seed, base.data, base.ai_labels, base.reward, base.dpo, base.winrate)
