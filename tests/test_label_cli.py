"""`rlthf label` end to end through the openai backend against a real llama.cpp server on loopback."""
import json

import pandas as pd
import yaml

from rlthf.cli import main
from tests.conftest import TEST_API_KEY_ENV
from tests.judge_servers import MODEL_ALIAS


def test_rlthf_label_through_the_openai_backend_then_from_the_cache(ray_local, llama_server, hh_rlhf_path,
                                                                     tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = {
        "output_dir": str(run_dir),
        "data": {"path": str(hh_rlhf_path), "max_pairs": 24, "shard_fraction": 0.25, "test_fraction": 0.2},
        "ai_labels": {"source": "judge"},
        "judge": {"backend": "openai", "model": MODEL_ALIAS, "base_url": llama_server, "api_key_env": TEST_API_KEY_ENV,
                  "both_orders": True, "mode": "generate", "max_new_tokens": 48, "max_prompt_chars": 1500, "concurrency": 2,
                  "timeout_s": 120, "max_retries": 1, "batch_size": 4, "prompt_price_per_1m": 2.5,
                  "cache_dir": str(tmp_path / "verdicts")},  # shared by the runs below
    }
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["label", "--config", str(path)]) == 0
    report = json.loads((run_dir / "judge/report.json").read_text())
    shard = pd.read_parquet(run_dir / "data/pairs.parquet").query("in_shard")
    assert report["pairs"] == len(shard) and report["requests"] == 2 * len(shard) == report["asked"]
    assert report["prompt_tokens"] > 0 and report["cost"] == report["prompt_tokens"] * 2.5 / 1e6
    labels = pd.read_parquet(run_dir / "judge/labels.parquet")
    assert sorted(labels["id"]) == sorted(shard["id"])
    assert set(labels["confidence"]) <= {"consistent", "inconsistent", "single", "failed"}
    assert not (run_dir / "judge/verdicts").exists()
    verdicts = pd.read_parquet(tmp_path / "verdicts")  # the shared cache's parts
    assert sorted(verdicts["key"]) == sorted(f"{i}|{o}" for i in shard["id"] for o in ("ab", "ba"))
    assert verdicts["raw"][~verdicts["retryable"]].str.len().gt(0).all()  # raw answers are kept, parseable or not
    assert (labels["retryable_ab"] | labels["retryable_ba"]).sum() == report["errors"]
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):printed.rindex("}") + 1]) == report  # the report is printed

    # Another run sharing judge.cache_dir (an experiment's next method) pays for nothing.
    other = tmp_path / "other_run"
    path.write_text(yaml.safe_dump({**config, "output_dir": str(other)}))
    assert main(["label", "--config", str(path)]) == 0
    again = json.loads((other / "judge/report.json").read_text())
    assert again["asked"] == 0 and again["from_cache"] == report["requests"]
    relabelled = pd.read_parquet(other / "judge/labels.parquet").sort_values("id", ignore_index=True)
    assert relabelled[["id", "label", "confidence"]].equals(labels.sort_values("id", ignore_index=True)[
        ["id", "label", "confidence"]])

    key = __import__("os").environ[TEST_API_KEY_ENV]
    for file in tmp_path.rglob("*"):  # the runs and the shared cache
        if file.is_file():
            assert key.encode() not in file.read_bytes(), file
