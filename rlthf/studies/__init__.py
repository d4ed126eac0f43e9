"""Studies over many runs: baselines and ablations, Ray Tune sweeps, the downstream table."""
