"""The paper's baselines (appendix C.3) as overrides of a run's config, defined once for every study.

- ``ai_only``: reward model 0 on the AI labels alone, no human label at all;
- ``random``: AI labels plus as many human labels as RLTHF gets, drawn at random;
- ``human``: every shard pair human-labelled;
- ``rlthf``: the config as it is.
"""
from __future__ import annotations

NO_EYES_OFF = ["annotation.eyes_off_min=0", "annotation.eyes_off_fraction=0"]
BASELINE_OVERRIDES = {
    "ai_only": ["selection.iterations=0", *NO_EYES_OFF],
    "random": ["selection.selector=random"],
    "human": ["selection.selector=random", "selection.iterations=1", "selection.annotation_fraction=1.0",
              *NO_EYES_OFF],
    "rlthf": [],
}
BASELINE_NAMES = {"ai_only": "AI-only", "random": "Random", "human": "Human", "rlthf": "RLTHF"}
