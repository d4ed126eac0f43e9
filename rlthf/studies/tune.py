"""`rlthf tune`: Ray Tune searches RLTHF's alpha and beta schedules and the annotation batch size (ASHA).

The paper hand-tunes alpha (amplification) and beta (back-off) (appendix C.4). Here each trial runs the real loop
(``rlthf.run.driver.run``, the ``encoder_head`` backend on the shared embedding cache) with

    alpha_k = max(alpha_floor, alpha_start * alpha_decay ** (k - 1))     (rlthf.core.selection.decayed_schedule)
    beta_k  = max(beta_floor,  beta_start  * beta_decay  ** (k - 1))
    annotation_fraction = batch,  iterations = round(budget_fraction / batch)

so that every trial spends the same human budget (``budget_fraction`` of the shard, plus the eyes-off labels).
After every iteration the trial reports its metrics row (``on_iteration``); ASHA's clock is the share of the
shard human-labelled (``human_pct_shard``), so trials with different batch sizes are compared at about the same
budget, and a bad schedule is stopped after one or two iterations. The objective is the test accuracy.

Outputs under ``output_dir``: ``results.md`` and ``results.csv`` (one row per trial), ``best_config.yaml`` (the
base config with the best schedule, ready for ``rlthf run``), and Tune's own experiment folder ``ray_results/``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rlthf.config import RLTHFConfig, load_config, save_config
from rlthf.settings import from_dict, option, read_yaml, require
from rlthf.core.selection import decayed_schedule


def _range(default: list[float], text: str):
    return field(default_factory=lambda d=default: list(d), metadata={"help": text})


@dataclass
class TuneSettings:
    base: str = option("configs/demo.yaml", "The RLTHF config every trial starts from.")
    output_dir: str = option("runs/tune_demo", "Trial run directories, results.md/csv, best_config.yaml.")
    overrides: list[str] = option([], "KEY=VALUE overrides of the base config for every trial (e.g. a smaller "
                                 "data.max_pairs for a test).")
    # the search
    num_samples: int = option(12, "Trials (random search over the space below).")
    max_concurrent_trials: int = option(2, "Trials at once (each runs the whole loop).")
    cpus_per_trial: float = option(1.0, "Ray CPUs a trial reserves (its Ray Data scoring actor takes one more).")
    num_cpus: int = option(4, "Logical CPUs of the local Ray Tune starts (room for trials and their actors).")
    search_seed: int = option(0, "Seed of the random search, so a sweep can be repeated.")
    budget_fraction: float = option(0.19, "Human labels per trial, as a fraction of the shard (5 x 3.8%).")
    batch_fractions: list[float] = option([0.019, 0.038, 0.076], "Annotation batch sizes to choose from "
                                         "(fractions of the shard); iterations = round(budget / batch).")
    alpha_start: list[float] = _range([1.0, 8.0], "alpha at iteration 1: uniform in [low, high].")
    alpha_decay: list[float] = _range([0.5, 1.0], "alpha's factor per iteration: uniform in [low, high].")
    alpha_floor: list[float] = _range([1.0, 4.0], "alpha never falls below this: uniform in [low, high].")
    beta_start: list[float] = _range([0.2, 0.8], "beta at iteration 1: uniform in [low, high].")
    beta_decay: list[float] = _range([0.4, 1.0], "beta's factor per iteration: uniform in [low, high].")
    beta_floor: list[float] = _range([0.0, 0.3], "beta never falls below this: uniform in [low, high].")
    # ASHA
    grace_pct: float = option(4.0, "ASHA's first rung: % of the shard human-labelled (about one iteration).")
    reduction_factor: float = option(2.0, "ASHA keeps the best 1/reduction_factor at each rung.")

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, "num_samples", "must be >= 1")
        require(self.max_concurrent_trials >= 1, "max_concurrent_trials", "must be >= 1")
        require(self.num_cpus >= 1, "num_cpus", "must be >= 1")
        require(0 < self.budget_fraction <= 1, "budget_fraction", "must be in (0, 1]")
        require(len(self.batch_fractions) >= 1 and all(0 < b <= self.budget_fraction for b in self.batch_fractions),
               "batch_fractions", "must be a non-empty list of numbers in (0, budget_fraction]")
        for name, low, high in (("alpha_start", 1, None), ("alpha_decay", 0, 1), ("alpha_floor", 1, None),
                                ("beta_start", 0, 1), ("beta_decay", 0, 1), ("beta_floor", 0, 1)):
            bounds = getattr(self, name)
            ok = (len(bounds) == 2 and bounds[0] <= bounds[1] and bounds[0] >= low
                  and (high is None or bounds[1] <= high))
            require(ok, name, f"must be [low, high] with low <= high, within [{low}, {high or 'inf'}]")
            if name in ("alpha_decay", "beta_decay"):
                require(bounds[0] > 0, name, "must be above 0")
            if name in ("beta_start", "beta_floor"):
                require(bounds[1] < 1, name, "must stay below 1 (beta < 1)")
        require(self.grace_pct > 0, "grace_pct", "must be > 0")
        require(self.reduction_factor > 1, "reduction_factor", "must be > 1")


def load_tune(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TuneSettings:
    """Read a tune YAML (top-level ``KEY=VALUE`` overrides allowed) and check the base config loads."""
    raw = read_yaml(path, overrides)
    settings = from_dict(TuneSettings, raw)
    base_config(settings)  # a bad base config or override fails now, not inside a trial
    return settings


def base_config(settings: TuneSettings) -> RLTHFConfig:
    """The base config with absolute data and cache paths, so trials (in their own directories) share them."""
    config = load_config(settings.base, settings.overrides)
    if not config.data.path.startswith(("hf:",)) and Path(config.data.path).exists():
        config.data.path = str(Path(config.data.path).resolve())
    config.reward.cache_dir = str(Path(config.reward.cache_dir or Path(settings.output_dir) / "cache").resolve())
    return config


def trial_config(base: dict, params: dict, output_dir: str) -> RLTHFConfig:
    """One trial's RLTHF config: the base with the sampled schedules, batch size and iteration count."""
    budget, batch = params["budget_fraction"], params["batch"]
    iterations = max(1, round(budget / batch))
    config = from_dict(RLTHFConfig, base)
    config.output_dir = output_dir
    s = config.selection
    s.iterations = iterations
    s.annotation_fraction = batch
    s.amplification = [max(1.0, a) for a in decayed_schedule(params["alpha_start"], params["alpha_decay"],
                                                               params["alpha_floor"], iterations)]
    s.backoff = decayed_schedule(params["beta_start"], params["beta_decay"], params["beta_floor"], iterations)
    s.__post_init__()
    return config


def best_schedule_config(settings: TuneSettings, params: dict) -> RLTHFConfig:
    """The base config (its paths as written) with a trial's schedule: what ``best_config.yaml`` holds."""
    base = load_config(settings.base, settings.overrides)
    return trial_config(base.to_dict(), params, f"{base.output_dir}_tuned")


def trial(params: dict) -> None:
    """Tune function trainable: run the loop and report every iteration's metrics."""
    from ray import tune

    from rlthf.run.driver import run

    trial_dir = Path(params["output_root"]) / "trials" / tune.get_context().get_trial_id()
    config = trial_config(params["base"], params, str(trial_dir))

    def report(row: dict) -> None:
        tune.report({"test_acc": row["test_acc"], "human_pct_shard": row["human_pct_shard"],
                     "human_labels": row["human_labels"], "label_acc": row["label_acc"], "iteration": row["iteration"],
                     "iterations": config.selection.iterations})

    run(config, echo=lambda _: None, on_iteration=report)


def search_space(settings: TuneSettings, base: RLTHFConfig, output_root: Path) -> dict:
    from ray import tune

    def uniform(bounds):
        return tune.uniform(*bounds) if bounds[0] < bounds[1] else bounds[0]

    return {"base": base.to_dict(), "output_root": str(output_root), "budget_fraction": settings.budget_fraction,
            "batch": tune.choice(settings.batch_fractions),
            **{name: uniform(getattr(settings, name)) for name in
               ("alpha_start", "alpha_decay", "alpha_floor", "beta_start", "beta_decay", "beta_floor")}}


def run_tune(settings: TuneSettings, *, echo: Callable[[str], None] = print) -> dict:
    """Run the sweep; write results.md/csv and best_config.yaml; return the best trial's params and metrics."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    out = Path(settings.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(settings)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`: join the cluster
        local = {} if address else {"num_cpus": settings.num_cpus, "include_dashboard": False}
        ray.init(address=address, log_to_driver=False, **local)
    max_pct = 100 * settings.budget_fraction + 100 * max(settings.batch_fractions)  # the eyes-off labels and rounding
    scheduler = ASHAScheduler(time_attr="human_pct_shard", max_t=max_pct, grace_period=settings.grace_pct,
                              reduction_factor=settings.reduction_factor, stop_last_trials=False)
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": settings.cpus_per_trial}),
        param_space=search_space(settings, base, out),
        tune_config=tune.TuneConfig(metric="test_acc", mode="max", scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    search_alg=BasicVariantGenerator(random_state=settings.search_seed,
                                                                     max_concurrent=settings.max_concurrent_trials)),
        run_config=tune.RunConfig(name="rlthf_tune", storage_path=str(out / "ray_results"), verbose=0))
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    errors = [r.error for r in grid if r.error]
    if len(errors) == len(grid):
        raise RuntimeError(f"every trial failed; the first: {errors[0]}")
    rows = results_rows(grid, settings.budget_fraction)
    best = max((r for r in rows if r["complete"]), key=lambda r: r["test_acc"], default=None) or \
        max(rows, key=lambda r: r["test_acc"])
    save_config(best_schedule_config(settings, best["params"]), out / "best_config.yaml")
    table = results_table(rows, best["trial_id"])
    (out / "results.md").write_text(
        f"{len(rows)} trials ({len(errors)} failed), ASHA on test accuracy against % of the shard human-labelled, "
        f"wall time {wall / 60:.1f} min.\n\n{table}\n")
    import pandas as pd

    pd.DataFrame([{k: v for k, v in r.items() if k != "params"} | r["params"] for r in rows]).to_csv(
        out / "results.csv", index=False)
    echo(table)
    echo(f"\n{len(rows)} trials in {wall / 60:.1f} min; best {best['trial_id']} (test acc {best['test_acc']:.1%}) "
         f"-> {out / 'best_config.yaml'}")
    return {"best": best, "rows": rows, "wall_s": wall, "errors": len(errors)}


PARAMS = ("batch", "alpha_start", "alpha_decay", "alpha_floor", "beta_start", "beta_decay", "beta_floor")


def results_rows(grid, budget_fraction: float) -> list[dict]:
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        if result.metrics is None or history is None or not len(history):
            continue
        last = result.metrics
        params = {k: result.config[k] for k in PARAMS} | {"budget_fraction": budget_fraction}
        rows.append({"trial_id": last["trial_id"], "params": params, "iterations_run": int(last["iteration"]),
                     "iterations": int(last["iterations"]), "complete": int(last["iteration"]) >= int(last["iterations"]),
                     "human_pct_shard": float(last["human_pct_shard"]), "test_acc": float(last["test_acc"]),
                     "label_acc": float(last["label_acc"])})
    return sorted(rows, key=lambda r: (not r["complete"], -r["test_acc"]))


def results_table(rows: list[dict], best_id: str) -> str:
    lines = ["| trial | batch % shard | alpha start/decay/floor | beta start/decay/floor | iterations run | "
             "human % shard | label acc | test acc | |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["params"]
        status = "best" if r["trial_id"] == best_id else ("" if r["complete"] else "stopped by ASHA")
        lines.append(f"| {r['trial_id']} | {100 * p['batch']:.1f} | {p['alpha_start']:.2f} / {p['alpha_decay']:.2f} / "
                     f"{p['alpha_floor']:.2f} | {p['beta_start']:.2f} / {p['beta_decay']:.2f} / {p['beta_floor']:.2f} | "
                     f"{r['iterations_run']}/{r['iterations']} | {r['human_pct_shard']:.1f} | {r['label_acc']:.1%} | "
                     f"{r['test_acc']:.1%} | {status} |")
    return "\n".join(lines)
