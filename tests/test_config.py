"""The typed config: defaults, the shipped YAML files, help on every option, and load-time errors that start with
the dotted key of what is wrong."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from rlthf.config import (AILabelConfig, AnnotationConfig, ConfigError, CurateConfig, DataConfig, JudgeConfig, RayConfig,
                          RewardConfig, RLTHFConfig, SelectionConfig, load_config, save_config)
from rlthf.config import DownstreamConfig, DPOConfig, WinRateConfig
from tests.conftest import REPO

SECTIONS = {"ray": RayConfig, "data": DataConfig, "ai_labels": AILabelConfig, "judge": JudgeConfig,
            "annotation": AnnotationConfig, "selection": SelectionConfig, "reward": RewardConfig,
            "curate": CurateConfig, "dpo": DPOConfig, "winrate": WinRateConfig, "downstream": DownstreamConfig}


def config_error(overrides, path=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value)


# Defaults and the shipped files

def test_defaults_load():
    config = load_config(None)
    assert isinstance(config, RLTHFConfig)
    assert config == RLTHFConfig()
    assert config.seed == 0 and config.output_dir == "runs/demo"
    assert config.selection.backoff == [0.6, 0.6, 0.6, 0.4, 0.2, 0.1] and config.selection.amplification == [4.0]
    assert config.reward.backend == "encoder_head" and config.data.on_invalid == "skip"
    assert config.ray.address is None and config.ray.num_cpus is None
    assert set(config.to_dict()) == {"seed", "output_dir", "storage_path", *SECTIONS}


def test_default_lists_are_not_shared():
    one, two = RLTHFConfig(), RLTHFConfig()
    one.selection.backoff.append(0.05)
    assert two.selection.backoff == [0.6, 0.6, 0.6, 0.4, 0.2, 0.1]


# run configs; an experiment or tune config (it names a `base:` run config) is checked in test_experiment/test_tune
SHIPPED = sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                 if "base" not in (yaml.safe_load(p.read_text()) or {}))


def test_demo_configs_are_shipped():
    assert {"demo.yaml", "demo_lora.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_holds_every_value_it_states(name):
    path = REPO / "configs" / name
    raw = yaml.safe_load(path.read_text())
    config = load_config(path)
    stated = 0
    for key, value in raw.items():
        if key in SECTIONS:
            section = getattr(config, key)
            for option, option_value in value.items():
                assert getattr(section, option) == option_value, f"{key}.{option}"
                stated += 1
            # What the file leaves out keeps the dataclass default.
            for f in dataclasses.fields(SECTIONS[key]):
                if f.name not in value:
                    assert getattr(section, f.name) == getattr(SECTIONS[key](), f.name), f"{key}.{f.name}"
        else:
            assert getattr(config, key) == value, key
            stated += 1
    assert stated > 20


def test_demo_config_values():
    config = load_config(REPO / "configs/demo.yaml")
    assert config.ray.num_cpus == 2
    assert config.data.ground_truth == "paper_flipped"
    assert config.ai_labels.noise == "hardness" and config.ai_labels.target_accuracy == 0.75
    assert config.selection.amplification == [4.0] and isinstance(config.selection.amplification[0], float)
    assert config.reward.backend == "encoder_head" and config.reward.cache_dir == "runs/cache"


def test_save_config_round_trips(tmp_path):
    config = load_config(None, ["reward.epochs=3", "selection.backoff=[0.5, 0.2]", "ray.address=auto"])
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_every_option_has_help():
    checked = 0
    for section, cls in [("", RLTHFConfig), *((f"{k}.", c) for k, c in SECTIONS.items())]:
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS and cls is RLTHFConfig:
                continue  # a section, not an option
            text = f.metadata.get("help")
            assert isinstance(text, str) and len(text) > 10, f"{section}{f.name} has no help"
            checked += 1
    assert checked == 3 + sum(len(dataclasses.fields(c)) for c in SECTIONS.values())  # seed, output_dir, storage_path


# Unknown keys

def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nverbose: 0.1\n")  # close to no section name, so no hint
    assert config_error([], path) == "verbose: unknown key"


def test_unknown_nested_key_with_hint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  learning_rat: 0.1\n")
    assert config_error([], path) == "reward.learning_rat: unknown key (did you mean reward.learning_rate?)"
    assert config_error(["selection.backof=[0.5]"]) == "selection.backof: unknown key (did you mean selection.backoff?)"


def test_unknown_section():
    assert config_error(["rewards.epochs=3"]) == "rewards: unknown key (did you mean reward?)"


# Wrong types: the message starts with the dotted key

@pytest.mark.parametrize("override, message", [
    ("reward.epochs=three", "reward.epochs: expected an integer, got 'three'"),
    ("reward.epochs=true", "reward.epochs: expected an integer, got True"),
    ("reward.epochs=3.0", "reward.epochs: expected an integer, got 3.0"),
    ("seed=1.5", "seed: expected an integer, got 1.5"),
    ("reward.learning_rate=fast", "reward.learning_rate: expected a number, got 'fast'"),
    ("reward.learning_rate=false", "reward.learning_rate: expected a number, got False"),
    ("ray.num_cpus=2.5", "ray.num_cpus: expected an integer, got 2.5"),
    ("data.path=3", "data.path: expected a string, got 3"),
    ("selection.flip=1", "selection.flip: expected true or false, got 1"),
    ("selection.backoff=[0.5, x]", "selection.backoff: expected list[float], got [0.5, 'x']"),
    ("selection.backoff=[0.5, true]", "selection.backoff: expected list[float], got [0.5, True]"),
    ("reward.lora_target_modules=[q_proj, 3]", "reward.lora_target_modules: expected list[str], got ['q_proj', 3]"),
    ("reward.lora_target_modules=q_proj", "reward.lora_target_modules: expected list[str], got 'q_proj'"),
])
def test_wrong_type(override, message):
    assert config_error([override]) == message


@pytest.mark.parametrize("override, key", [
    ("reward.backend=gpu", "reward.backend"),
    ("reward.head=Linear", "reward.head"),
    ("data.format=csv", "data.format"),
    ("data.on_invalid=false", "data.on_invalid"),
    ("ai_labels.noise=gaussian", "ai_labels.noise"),
    ("annotation.annotator=people", "annotation.annotator"),
])
def test_literal_out_of_range(override, key):
    message = config_error([override])
    assert message.startswith(f"{key}: expected one of ")
    allowed = typing_literal_values(key)
    assert all(repr(v) in message for v in allowed)


def typing_literal_values(dotted: str) -> tuple:
    import typing

    section, name = dotted.split(".")
    return typing.get_args(typing.get_type_hints(SECTIONS[section])[name])


# Range checks in __post_init__

@pytest.mark.parametrize("override, message", [
    ("data.test_fraction=1.5", "data.test_fraction: must be in (0, 1)"),
    ("data.test_fraction=0", "data.test_fraction: must be in (0, 1)"),
    ("data.shard_fraction=0", "data.shard_fraction: must be in (0, 1]"),
    ("data.max_pairs=5", "data.max_pairs: must be >= 10"),
    ("selection.backoff=[0.5, 1.0]", "selection.backoff: must be a non-empty list of numbers in [0, 1)"),
    ("selection.backoff=[]", "selection.backoff: must be a non-empty list of numbers in [0, 1)"),
    ("selection.amplification=[0.5]", "selection.amplification: must be a non-empty list of numbers >= 1"),
    ("selection.iterations=-1", "selection.iterations: must be >= 0"),
    ("selection.min_points=2", "selection.min_points: must be >= 3"),
    ("ray.num_cpus=0", "ray.num_cpus: must be >= 1"),
    ("ai_labels.target_accuracy=0.4", "ai_labels.target_accuracy: must be in [0.5, 1]"),
    ("ai_labels.hardness_folds=1", "ai_labels.hardness_folds: must be >= 2"),
    ("annotation.human_error_rate=0.5", "annotation.human_error_rate: must be in [0, 0.5)"),
    ("reward.epochs=0", "reward.epochs: must be >= 1"),
    ("reward.learning_rate=0", "reward.learning_rate: must be > 0"),
    ("reward.val_fraction=0.5", "reward.val_fraction: must be in (0, 0.5)"),
    ("reward.max_length=8", "reward.max_length: must be >= 16"),
])
def test_range_checks(override, message):
    assert config_error([override]) == message


def test_range_check_from_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  test_fraction: 1.5\n")
    assert config_error([], path) == "data.test_fraction: must be in (0, 1)"


def test_boundaries_that_are_allowed():
    config = load_config(None, ["data.shard_fraction=1", "selection.backoff=[0]", "selection.amplification=[1]",
                                "ai_labels.target_accuracy=1", "selection.iterations=0", "data.max_pairs=10"])
    assert config.data.shard_fraction == 1.0 and isinstance(config.data.shard_fraction, float)
    assert config.selection.backoff == [0.0] and config.selection.amplification == [1.0]
    assert config.ai_labels.target_accuracy == 1.0 and config.selection.iterations == 0


# Overrides

def test_overrides_apply_on_top_of_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  epochs: 30\n  learning_rate: 0.01\nselection:\n  backoff: [0.6]\n")
    config = load_config(path, ["reward.epochs=3", "selection.backoff=[0.5, 0.2]", "ray.address=auto",
                                "data.max_pairs=null", "reward.lora_target_modules=[q, v]"])
    assert config.reward.epochs == 3
    assert config.reward.learning_rate == 0.01  # untouched by the overrides
    assert config.selection.backoff == [0.5, 0.2]
    assert config.ray.address == "auto" and config.data.max_pairs is None
    assert config.reward.lora_target_modules == ["q", "v"]


def test_later_override_wins_and_whitespace_is_ignored():
    config = load_config(None, ["reward.epochs=3", " reward.epochs = 4"])
    assert config.reward.epochs == 4


def test_override_can_create_a_section():
    config = load_config(None, ["reward.deepspeed={zero_optimization: {stage: 2}}"])
    assert config.reward.deepspeed == {"zero_optimization": {"stage": 2}}


def test_override_into_a_scalar_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    assert config_error(["seed.value=3"], path) == "seed.value: seed is not a section"
    # Without the file the override builds {"value": 3}, which the type check then refuses.
    assert config_error(["seed.value=3"]) == "seed: expected an integer, got {'value': 3}"


@pytest.mark.parametrize("override", ["reward.epochs", "reward.epochs 3", "reward.epochs:3"])
def test_override_without_equals(override):
    message = config_error([override])
    assert message == f"{override}: an override is KEY=VALUE, e.g. reward.epochs=3"


@pytest.mark.parametrize("value, expected", [("1.5", [1.5]), ("2", [2.0]), ("[3, 2]", [3.0, 2.0])])
def test_schedule_as_a_single_number(tmp_path, value, expected):
    config = load_config(None, [f"selection.amplification={value}"])
    assert config.selection.amplification == expected
    assert all(type(v) is float for v in config.selection.amplification)
    path = tmp_path / "c.yaml"
    path.write_text(f"selection:\n  backoff: 0.3\n  amplification: {value}\n")
    from_file = load_config(path)
    assert from_file.selection.backoff == [0.3] and from_file.selection.amplification == expected


def test_schedule_single_bool_is_not_a_number():
    assert config_error(["selection.backoff=true"]) == "selection.backoff: expected list[float], got True"


# Bad files

def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("reward: {epochs: [1\n")
    message = config_error([], path)
    assert message.startswith(f"{path}: not valid YAML: ")
    assert "line 1" in message


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- seed\n- 1\n")
    assert config_error([], path) == f"{path}: expected a mapping of sections, got list"


def test_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == RLTHFConfig()


def test_missing_file_is_file_not_found(tmp_path):
    # Not a ConfigError: the CLI maps FileNotFoundError to exit status 2 as well (tests/test_cli.py).
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


# Known rough edges (see the report): each fails today.

def test_section_given_a_scalar_names_the_section():
    assert config_error(["reward=3"]) == "reward: expected a mapping, got int"


def test_override_with_invalid_yaml_value_is_a_config_error():
    message = config_error(["reward.epochs=[1"])
    assert message.startswith("reward.epochs: ")


def test_override_into_an_empty_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n")
    assert load_config(path) == RLTHFConfig()
    assert load_config(path, ["reward.epochs=3"]).reward.epochs == 3


def test_dict_type_message_starts_with_the_key():
    message = config_error(["reward.deepspeed=3"])
    assert message.startswith("reward.deepspeed: expected ") and message.endswith(", got 3")


def test_dict_type_message_is_readable():
    assert "<class" not in config_error(["reward.deepspeed=3"])


# Data groups and AI labels that come with the data (issue 12)

def test_group_and_column_label_defaults():
    config = load_config(None)
    assert config.data.group_column == "prompt"
    assert config.ai_labels.source == "simulated"
    assert config.ai_labels.column == "judge_label" and config.ai_labels.swapped_column is None


def test_column_labels_and_groups_load():
    config = load_config(None, ["ai_labels.source=column", "ai_labels.column=verdict",
                                "ai_labels.swapped_column=verdict_swapped", "data.group_column=question_id"])
    assert (config.ai_labels.source, config.ai_labels.column, config.ai_labels.swapped_column) == (
        "column", "verdict", "verdict_swapped")
    assert config.data.group_column == "question_id"
    assert load_config(None, ["data.group_column=id"]).data.group_column == "id"


@pytest.mark.parametrize("override, message", [
    ("data.group_column=3", "data.group_column: expected a string, got 3"),
    ("data.group_column=null", "data.group_column: expected a string, got None"),
    ("data.group_column=' '", "data.group_column: must name a column"),
    ("data.group_column=label", "data.group_column: 'label' is a label column rlthf sets itself, not a group"),
    ("ai_labels.column=''", "ai_labels.column: must name a column"),
    ("ai_labels.column=null", "ai_labels.column: expected a string, got None"),
    ("ai_labels.swapped_column=''", "ai_labels.swapped_column: must name a column"),
    ("ai_labels.swapped_column=judge_label", "ai_labels.swapped_column: must differ from ai_labels.column"),
    ("ai_labels.column=id", "ai_labels.column: 'id' is a pair column, not an AI label column (a record's own id, "
                            "human_label or label_source field is read as record_id, record_human_label, ...)"),
    ("ai_labels.swapped_column=human_label", "ai_labels.swapped_column: 'human_label' is a pair column, not an AI "
     "label column (a record's own id, human_label or label_source field is read as record_id, "
     "record_human_label, ...)"),
])
def test_group_and_label_column_errors_name_the_key(override, message):
    assert config_error([override]) == message


def test_ai_label_source_names_every_choice():
    message = config_error(["ai_labels.source=file"])
    assert message == "ai_labels.source: expected one of 'simulated', 'judge', 'column', got 'file'"
