"""What every reward backend shares: the Bradley-Terry loss, the text a reward is read from, the
validation split, the learning-rate schedule and the checkpoint's description file."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlthf.core.labels import checked_labels, hash_unit

CHECKPOINT_META = "rlthf_checkpoint.json"


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Paper eq. 2: ``-log sigmoid(r(chosen) - r(rejected))``, averaged over the batch (torch tensors)."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def reward_text(prompt: str, response: str) -> str:
    """The text the reward of ``response`` is read from. HH-RLHF prompts end with ``\\n\\nAssistant:``, so the
    dialogue reads on into the response; tokenizers truncate it from the left, keeping the latest turns."""
    return prompt + response



def chosen_rejected(prompt, response_a, response_b, label):
    """Arrays of chosen and rejected texts from a/b columns and a label column of 'a'/'b'."""
    label = checked_labels(label)
    a = np.asarray([reward_text(p, r) for p, r in zip(prompt, response_a)], dtype=object)
    b = np.asarray([reward_text(p, r) for p, r in zip(prompt, response_b)], dtype=object)
    is_a = label == "a"
    return np.where(is_a, a, b), np.where(is_a, b, a)


def validation_mask(ids, val_fraction: float, seed: int) -> np.ndarray:
    """True for pairs held out for validation: decided per pair id (so the copies of an amplified human label
    never straddle train and validation), by a seeded hash, with at least one pair on each side."""
    ids = np.asarray(ids).astype(str)
    unique = np.unique(ids)
    score = hash_unit(seed, "val", unique)
    n_val = min(max(1, int(round(val_fraction * len(unique)))), len(unique) - 1)
    held_out = set(unique[np.argsort(score, kind="stable")[:n_val]])
    return np.array([i in held_out for i in ids], dtype=bool)


def warmup_linear(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def write_meta(checkpoint_dir: str | Path, **meta: Any) -> None:
    from rlthf.rundir import atomic_write_json

    atomic_write_json(Path(checkpoint_dir) / CHECKPOINT_META, meta)


def read_meta(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / CHECKPOINT_META
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: not an rlthf reward checkpoint (no {CHECKPOINT_META})")
    return json.loads(path.read_text())


def pack_checkpoint(checkpoint_dir: str | Path, *members: str) -> bytes:
    """``members`` of a checkpoint folder (files or folders) and its description, as the bytes of a tar archive:
    what a scoring actor on any node unpacks (:func:`unpack_checkpoint`) where it could not read the driver's
    path."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in (CHECKPOINT_META, *members):
            archive.add(Path(checkpoint_dir) / name, arcname=name)
    return buffer.getvalue()


def unpack_checkpoint(packed: bytes, into: str | Path) -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(packed)) as archive:
        archive.extractall(into, filter="data")

