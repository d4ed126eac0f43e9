"""Fault tolerance of reward-model training: SIGKILL a Ray Train worker mid-run, by its pid.

``reward.max_failures`` (Ray Train ``FailureConfig``) restarts the worker group, which resumes from the last
epoch's checkpoint (``ray.train.get_checkpoint()``). The run must finish with the model an uninterrupted run
trains (same data, same seed) and score every pair exactly once.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from rlthf.config import RewardConfig
from rlthf.reward.common import read_meta
from rlthf.reward.lora import LoraReward
from tests.conftest import MINILM
from tests.test_reward_lora import synthetic_pairs

pytestmark = pytest.mark.slow

TRAIN_WORKER = "RayTrainWorker"  # the process title Ray gives a Ray Train worker actor
REGISTERED = "checkpoint_manager_snapshot.json"  # Ray Train writes it once a reported checkpoint is registered


def tiny_config(**changes) -> RewardConfig:
    settings = dict(backend="lora", model=MINILM, max_length=64, epochs=3, batch_size=8, learning_rate=2e-3,
                    val_fraction=0.2, num_workers=1, cpus_per_worker=1, score_batch_size=32, max_failures=1)
    return RewardConfig(**(settings | changes))


def train_worker_pids() -> list[int]:
    """Ray Train workers among this process's descendants: the test's own Ray, never another session's."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(TRAIN_WORKER in part for part in proc.cmdline()):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def kill_after_first_checkpoint(storage: Path, done: threading.Event, timeout_s: float = 300) -> int | None:
    """SIGKILL the training worker once the first epoch's checkpoint is on disk; its pid, or None if the run
    finished (or timed out) first."""
    deadline = time.monotonic() + timeout_s
    while not done.is_set() and time.monotonic() < deadline:
        if any(storage.glob(f"*/{REGISTERED}")):
            pids = train_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                return pids[0]
        time.sleep(0.1)
    return None


def scored(backend: LoraReward, pairs, checkpoint: Path):
    return backend.score(pairs, checkpoint).to_pandas().sort_values("id").reset_index(drop=True)


def test_a_killed_training_worker_resumes_from_its_checkpoint(ray_local, hh_rlhf_path, tmp_path):
    import ray.data

    frame = synthetic_pairs(hh_rlhf_path, 40)
    pairs = ray.data.from_pandas(frame)
    backend = LoraReward(tiny_config())

    reference = backend.train(pairs, tmp_path / "reference", seed=0)

    out_dir = tmp_path / "killed"
    done, outcome = threading.Event(), {}

    def train():
        try:
            outcome["checkpoint"] = backend.train(pairs, out_dir, seed=0)
        except BaseException as err:  # noqa: BLE001  (re-raised on the test's thread)
            outcome["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=train)
    thread.start()
    killed = kill_after_first_checkpoint(out_dir / "ray_train", done)
    thread.join(timeout=600)
    assert killed is not None, "training finished before a checkpoint and a live worker were seen; nothing killed"
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert "error" not in outcome, f"training did not survive the kill: {outcome.get('error')!r}"

    meta, reference_meta = read_meta(outcome["checkpoint"]), read_meta(reference)
    # resumed, not restarted: every epoch in the history once, the later ones in a restored worker group
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert [h["resumed"] for h in reference_meta["history"]] == [False, False, False]
    assert meta["history"][0]["resumed"] is False and meta["history"][-1]["resumed"] is True
    assert meta["train_pairs"] + meta["val_pairs"] == len(frame)
    np.testing.assert_allclose([h["val_loss"] for h in meta["history"]],
                               [h["val_loss"] for h in reference_meta["history"]], rtol=1e-4, atol=1e-5)

    rewards, reference_rewards = scored(backend, pairs, outcome["checkpoint"]), scored(backend, pairs, reference)
    assert rewards["id"].tolist() == sorted(frame["id"]), "a pair was lost or scored twice"
    np.testing.assert_allclose(rewards[["reward_a", "reward_b"]].to_numpy(float),
                               reference_rewards[["reward_a", "reward_b"]].to_numpy(float), rtol=1e-4, atol=1e-4)


def test_without_restarts_the_same_kill_fails_the_run_clearly(ray_local, hh_rlhf_path, tmp_path):
    """max_failures=0: the control. The kill is what the restarts absorb, not a no-op."""
    import ray.data

    pairs = ray.data.from_pandas(synthetic_pairs(hh_rlhf_path, 40))
    backend = LoraReward(tiny_config(max_failures=0))
    done, outcome = threading.Event(), {}

    def train():
        try:
            outcome["checkpoint"] = backend.train(pairs, tmp_path / "out", seed=0)
        except BaseException as err:  # noqa: BLE001
            outcome["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=train)
    thread.start()
    killed = kill_after_first_checkpoint(tmp_path / "out" / "ray_train", done)
    thread.join(timeout=600)
    assert killed is not None
    assert isinstance(outcome.get("error"), RuntimeError)
    assert "LoRA reward training failed" in str(outcome["error"])
