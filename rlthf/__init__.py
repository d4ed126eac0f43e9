"""RLTHF: Reinforcement Learning from Targeted Human Feedback, on Ray.

The public API, imported lazily so that ``import rlthf.core`` stays numpy-only:

- ``load_config``, ``RLTHFConfig``: the typed config.
- ``load_pairs``: preference pairs as a ``ray.data.Dataset``.
- ``analyze_curve``, ``select_pairs``: the pure algorithm.
- ``run``: the whole resumable loop.
- ``label``, ``train_reward_model``, ``score``, ``attach_rewards``, ``analyze``, ``select``: the loop's steps on
  ``ray.data.Dataset`` with typed config sections, to embed in a larger Ray pipeline (``rlthf/pipeline.py``).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "RLTHFConfig": "rlthf.config",
    "load_config": "rlthf.config",
    "load_pairs": "rlthf.data",
    "read_pairs": "rlthf.data",
    "analyze_curve": "rlthf.core.curve",
    "CurveAnalysis": "rlthf.core.curve",
    "select_pairs": "rlthf.core.selection",
    "run": "rlthf.run.driver",
    # steps on ray.data.Dataset, for embedding rlthf in a larger Ray pipeline (rlthf/pipeline.py)
    "label": "rlthf.pipeline",
    "train_reward_model": "rlthf.pipeline",
    "score": "rlthf.pipeline",
    "attach_rewards": "rlthf.pipeline",
    "analyze": "rlthf.pipeline",
    "select": "rlthf.pipeline",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlthf' has no attribute {name!r}")
