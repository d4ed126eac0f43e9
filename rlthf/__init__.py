"""RLTHF: Reinforcement Learning from Targeted Human Feedback, on Ray.

The public API, imported lazily so that ``import rlthf.analysis`` stays numpy-only:

- ``load_config``, ``RLTHFConfig``: the typed config.
- ``load_pairs``: preference pairs as a ``ray.data.Dataset``.
- ``analyze_curve``, ``select_pairs``: the pure algorithm.
- ``run``: the whole resumable loop.
- ``label``, ``train_reward_model``, ``score``, ``attach_rewards``, ``analyze``, ``select``: the loop's steps on
  ``ray.data.Dataset`` with typed config sections, to embed in a larger Ray pipeline (``rlthf/api.py``).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "RLTHFConfig": "rlthf.config",
    "load_config": "rlthf.config",
    "load_pairs": "rlthf.data",
    "read_pairs": "rlthf.data",
    "analyze_curve": "rlthf.analysis",
    "CurveAnalysis": "rlthf.analysis",
    "select_pairs": "rlthf.selection",
    "run": "rlthf.loop",
    # steps on ray.data.Dataset, for embedding rlthf in a larger Ray pipeline (rlthf/api.py)
    "label": "rlthf.api",
    "train_reward_model": "rlthf.api",
    "score": "rlthf.api",
    "attach_rewards": "rlthf.api",
    "analyze": "rlthf.api",
    "select": "rlthf.api",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlthf' has no attribute {name!r}")
