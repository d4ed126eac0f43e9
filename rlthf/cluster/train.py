"""The Ray Train shell shared by reward-model training and DPO: a run name that resumes only its own run, one
``TorchTrainer`` fit, and the worker's own error out of Ray Train's wrappers."""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Optional


def fingerprint(rows, loop_config: dict) -> str:
    """Short hash of the training rows (a DataFrame) and settings: the Ray Train run name, so a relaunched driver
    resumes its own run and never a run on other data."""
    import pandas as pd

    h = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).values.tobytes())
    h.update(json.dumps(loop_config, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def failure_cause(err: BaseException) -> str:
    """The worker's own exception inside Ray Train's wrapper, as ``Type: message``."""
    failures = getattr(err, "worker_failures", None)  # Ray Train V2 WorkerGroupError: {rank: exception}
    if failures:
        rank, exc = sorted(failures.items())[0]
        return f"worker rank {rank}: {failure_cause(exc)}"
    inner = getattr(err, "controller_failure", None) or getattr(err, "cause", None) or err.__cause__
    if inner is not None and inner is not err:
        return failure_cause(inner)
    return f"{type(err).__name__}: {err}"


def fit_torch_trainer(train_loop: Callable[[dict], None], loop_config: dict, *, what: str, rows, name_prefix: str,
                      storage_path: str, num_workers: int, use_gpu: bool, cpus_per_worker: float, datasets: dict,
                      datasets_to_split: list[str], checkpoint_config, max_failures: Optional[int] = None):
    """Run ``train_loop`` on a ``TorchTrainer`` named by the rows' and settings' fingerprint; returns the
    ``ray.train.Result``. A failure raises ``RuntimeError("<what> failed: <the worker's error>")``."""
    import ray.train
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # a dead worker (or node) restarts the worker group, which resumes from the last reported checkpoint
    failure = {} if max_failures is None else {"failure_config": FailureConfig(max_failures=max_failures)}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(storage_path=storage_path, name=f"{name_prefix}-{fingerprint(rows, loop_config)}",
                             checkpoint_config=checkpoint_config, **failure),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=datasets_to_split),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise RuntimeError(f"{what} failed: {failure_cause(err)}") from err
    if getattr(result, "error", None) is not None:  # Ray Train V1 returns the error instead
        raise RuntimeError(f"{what} failed: {failure_cause(result.error)}") from result.error
    return result
