"""`rlthf experiment`: a named set of methods (baselines, selectors, ablations) over several seeds, one report.

Every method is the base config plus ``KEY=VALUE`` overrides, run with the real loop (``rlthf.run.driver.run``) in
its own run directory ``<output_dir>/runs/<method>_seed<seed>``, so a rerun resumes and skips finished runs.
Each seed changes the split, the shard, the AI labeler's mistakes and the random picks, and every method of a
seed shares them. The report (``<output_dir>/report.md``) has, per group, a table of means and spreads over the
seeds and a figure of test accuracy against the share of the corpus human-labelled (the paper's figures 3-5).

Definitions (paper 4.1.2):
- *ROI*: test-accuracy gain over AI-only (same seed) per 1% of the corpus human-labelled, in points;
- *ROI over Random*: a method's ROI divided by Random's mean ROI; undefined (``-``) unless Random's mean ROI is
  positive and at least one standard error (over the seeds) above zero, since a ratio to noise means nothing;
- *test acc - RLTHF's*: the difference to RLTHF's test accuracy on the same seed, averaged over the method's
  seeds (seeds move test accuracy by about 2 points, so compare methods paired);
- *reaches Human*: the smallest % of the corpus human-labelled at which the method's mean test accuracy is at
  least the mean test accuracy of the reward model trained on all human labels of the shard.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from rlthf.config import load_config
from rlthf.core.selection import BUDGET_PATTERN
from rlthf.settings import ConfigError, from_dict, option, read_yaml, require
from rlthf.studies.baselines import BASELINE_NAMES, BASELINE_OVERRIDES


@dataclass
class ExperimentConfig:
    base: str = option("configs/demo.yaml", "The RLTHF config every method starts from (relative to this file's "
                      "directory's parent when not absolute and not found from the working directory).")
    base_overrides: list[str] = option([], "KEY=VALUE overrides of the base config shared by every method, applied "
                                       "before each method's own: a variant of a preset without a copy of it.")
    output_dir: str = option("runs/experiment", "Run directories, report.md, results.json and the figures.")
    seeds: list[int] = option([0, 1, 2], "Seeds; every method runs once per seed.")
    methods: dict = field(default_factory=dict, metadata={
        "help": "Method name -> list of KEY=VALUE overrides of the base config (as `--set`). The methods named in "
                "`reference` come from rlthf.studies.baselines unless listed here."})
    groups: dict = field(default_factory=dict, metadata={
        "help": "Group name -> method names: one table and one figure per group, in this order."})
    budgets: list[str] = option([], "Human-label budgets as shares of the corpus ('5%'): each method not in "
                                "budget_free runs at each, as 'METHOD @ BUDGET' (annotation.budget, and the batch "
                                "so the iterations spend it). Empty: the methods as written.")
    budget_free: list[str] = option(["AI-only"], "Methods that ask no human and so run once, not per budget.")
    reference: dict = field(default_factory=lambda: dict(BASELINE_NAMES), metadata={
        "help": "Which methods are AI-only, Random, Human and RLTHF (ROI and the headline; a role left out skips them)."})

    def __post_init__(self) -> None:
        require(len(self.seeds) >= 1, "seeds", "must list at least one seed")
        require(is_override_list(self.base_overrides), "base_overrides", "must be a list of KEY=VALUE strings")
        for role, name in self.reference.items():
            require(role in BASELINE_OVERRIDES, f"reference.{role}", "unknown role")
        baselines = {name: list(BASELINE_OVERRIDES[role]) for role, name in self.reference.items()}
        self.methods = {**baselines, **self.methods}
        for budget in self.budgets:
            require(budget_share(budget) is not None, "budgets", f"a budget is a share like '10%'; got {budget!r}")
        if self.budgets:
            self.methods = {variant: overrides for name, overrides in self.methods.items()
                            for variant, overrides in budget_variants(name, overrides, self.budgets,
                                                                      self.budget_free).items()}
        require(len(self.methods) >= 1, "methods", "must name at least one method")
        for name, overrides in self.methods.items():
            require(is_override_list(overrides), f"methods.{name}", "must be a list of KEY=VALUE strings")
        for group, names in self.groups.items():
            unknown = [n for n in names if n not in self.methods]
            require(not unknown, f"groups.{group}", f"unknown method {unknown[0]!r}" if unknown else "")


def is_override_list(overrides) -> bool:
    """Whether ``overrides`` is a list of ``KEY=VALUE`` strings, as `--set` takes them."""
    return isinstance(overrides, list) and all(isinstance(o, str) and "=" in o for o in overrides)


BUDGET_MARK = " @ "


def budget_share(budget: str) -> Optional[float]:
    """'10%' as 0.1; None for anything else."""
    match = BUDGET_PATTERN.match(budget) if isinstance(budget, str) else None
    return float(match.group(1)) / 100 if match else None


def budget_variants(name: str, overrides: list[str], budgets: list[str], budget_free: list[str]) -> dict:
    """``name`` at every budget: ``annotation.budget``, spread over the iterations (``selection.spread_budget``)."""
    if name in budget_free:
        return {name: overrides}
    return {f"{name}{BUDGET_MARK}{b}": [*overrides, f"annotation.budget={b}", "selection.spread_budget=true"]
            for b in budgets}


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML; every method's overrides are checked against the base config now."""
    raw = read_yaml(path, overrides)
    config = from_dict(ExperimentConfig, raw)
    base = Path(config.base)
    if not base.is_absolute() and not base.exists():
        base = Path(path).resolve().parent.parent / config.base
    config.base = str(base)
    try:
        load_config(config.base, config.base_overrides)
    except ConfigError as err:
        raise ConfigError(f"base_overrides: {err}") from None
    for name in config.methods:
        try:
            load_config(config.base, method_overrides(config, name))
        except ConfigError as err:
            raise ConfigError(f"methods.{name}: {err}") from None
    return config


def method_overrides(config: ExperimentConfig, name: str) -> list[str]:
    """What a method changes in the base config: the shared overrides, then its own (the later wins)."""
    return [*config.base_overrides, *config.methods[name]]


def run_experiment(config: ExperimentConfig, *, echo: Callable[[str], None] = print,
                   methods: Optional[list[str]] = None) -> dict:
    """Run every method (or ``methods``) for every seed, then write the report; returns the results."""
    from rlthf.run.driver import run

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    names = methods or list(config.methods)
    unknown = [n for n in names if n not in config.methods]
    if unknown:
        raise ValueError(f"methods: {unknown[0]!r} is not in the experiment (it has {', '.join(config.methods)})")
    for name in names:  # a method at a time over every seed, so a report of a cut-short run has whole methods
        for seed in config.seeds:
            key = f"{name}_seed{seed}"
            if key in results:
                continue
            overrides = [f"seed={seed}", f"output_dir={out / 'runs' / key}", *method_overrides(config, name)]
            start = time.perf_counter()
            result = run(load_config(config.base, overrides), echo=lambda _: None)
            wall = time.perf_counter() - start
            results[key] = {"method": name, "seed": seed, "wall_s": wall, "summary": result.summary,
                            "rows": [{k: r[k] for k in ("iteration", "human_labels", "human_pct_corpus",
                                                        "human_pct_shard", "label_acc", "test_acc", "asked",
                                                        "batch_was_wrong")}
                                     for r in result.metrics]}
            results_path.write_text(json.dumps(results, indent=1))
            last = result.metrics[-1]
            echo(f"seed {seed} {name:24s} human {last['human_pct_corpus']:5.2f}% of corpus  label acc "
                 f"{last['label_acc']:.3f}  test acc {last['test_acc']:.3f}  ({wall:.0f} s)")
    write_report(config, results)
    return results


# --- aggregation: plain Python on the results, no Ray ---------------------------------------------------------

def method_runs(results: dict, method: str) -> list[dict]:
    return sorted((r for r in results.values() if r["method"] == method), key=lambda r: r["seed"])


def mean_spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def roi(run: dict, ai_only: dict) -> Optional[float]:
    """Test-accuracy gain over the same seed's AI-only, in points per 1% of the corpus human-labelled."""
    pct = run["rows"][-1]["human_pct_corpus"]
    if pct <= 0:
        return None
    return 100 * (run["rows"][-1]["test_acc"] - ai_only["rows"][-1]["test_acc"]) / pct


def curve(runs: list[dict], key: str = "test_acc") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per iteration, over seeds: mean % corpus human-labelled, mean and spread of ``key``."""
    depth = min(len(r["rows"]) for r in runs)
    pct = np.array([[r["rows"][i]["human_pct_corpus"] for r in runs] for i in range(depth)])
    val = np.array([[r["rows"][i][key] for r in runs] for i in range(depth)])
    spread = val.std(axis=1, ddof=1) if len(runs) > 1 else np.zeros(depth)
    return pct.mean(axis=1), val.mean(axis=1), spread


def reaches(runs: list[dict], target: float) -> Optional[float]:
    """The smallest mean % of the corpus human-labelled at which the mean test accuracy is >= ``target``."""
    pct, acc, _ = curve(runs)
    hit = np.flatnonzero(acc >= target)
    return float(pct[hit[0]]) if len(hit) else None


def summary_rows(results: dict, names: list[str], reference: dict) -> list[dict]:
    """One row per method with every seed: means and spreads of the last iteration, ROI and wall time."""
    ai = {r["seed"]: r for r in method_runs(results, reference.get("ai_only"))}
    random_roi = [roi(r, ai[r["seed"]]) for r in method_runs(results, reference.get("random")) if r["seed"] in ai]
    random_roi = [v for v in random_roi if v is not None]
    random_mean = None  # a ratio to Random's ROI needs it at least one standard error above zero, not noise
    if random_roi:
        mean, std = mean_spread(random_roi)
        random_mean = mean if mean > 0 and mean >= std / np.sqrt(len(random_roi)) else None
    human = method_runs(results, reference.get("human"))
    human_acc = mean_spread([r["rows"][-1]["test_acc"] for r in human])[0] if human else None
    rlthf = {r["seed"]: r for r in method_runs(results, reference.get("rlthf"))}
    rows = []
    for name in names:
        runs = method_runs(results, name)
        if not runs:
            continue
        last = [r["rows"][-1] for r in runs]
        rois = [roi(r, ai[r["seed"]]) for r in runs if r["seed"] in ai]
        rois = [v for v in rois if v is not None]
        row = {"method": name, "seeds": [r["seed"] for r in runs],
               "human_labels": mean_spread([x["human_labels"] for x in last]),
               "human_pct_corpus": mean_spread([x["human_pct_corpus"] for x in last]),
               "label_acc": mean_spread([x["label_acc"] for x in last]),
               "test_acc": mean_spread([x["test_acc"] for x in last]),
               "curated_acc": mean_spread([r["summary"]["curated_label_acc"] for r in runs]),
               "roi": mean_spread(rois) if rois else None,
               "wall_s": mean_spread([r["wall_s"] for r in runs])}
        row["reaches_human"] = reaches(runs, human_acc) if human_acc is not None else None
        paired = [r["rows"][-1]["test_acc"] - rlthf[r["seed"]]["rows"][-1]["test_acc"]
                  for r in runs if r["seed"] in rlthf]
        row["vs_rlthf"] = mean_spread(paired) if paired else None
        row["roi_over_random"] = (row["roi"][0] / random_mean
                                  if row["roi"] is not None and random_mean is not None else None)
        rows.append(row)
    return rows


def _pm(value: tuple[float, float], scale: float = 100.0, digits: int = 1, unit: str = "%") -> str:
    return f"{scale * value[0]:.{digits}f}{unit} ± {scale * value[1]:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | seeds | human labels | human % corpus | shard label acc | test acc | curated corpus acc | "
             "test acc - RLTHF's, same seeds | ROI (test pts per 1%) | ROI / Random | reaches Human at % corpus | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        roi_cell = "-" if r["roi"] is None else f"{r['roi'][0]:+.2f} ± {r['roi'][1]:.2f}"
        ratio = "-" if r["roi_over_random"] is None else f"{r['roi_over_random']:.1f}x"
        reach = "never" if r["reaches_human"] is None else f"{r['reaches_human']:.2f}"
        paired = "-" if r["vs_rlthf"] is None else f"{100 * r['vs_rlthf'][0]:+.1f} ± {100 * r['vs_rlthf'][1]:.1f}"
        lines.append(f"| {r['method']} | {len(r['seeds'])} | {r['human_labels'][0]:.0f} | {r['human_pct_corpus'][0]:.2f} | "
                     f"{_pm(r['label_acc'])} | {_pm(r['test_acc'])} | {_pm(r['curated_acc'])} | {paired} | {roi_cell} | "
                     f"{ratio} | {reach} | {r['wall_s'][0]:.0f} |")
    return "\n".join(lines)


def headline(results: dict, reference: dict) -> dict:
    """RLTHF's (and Random's) first budget reaching Human's mean test accuracy, and RLTHF's ROI over Random."""
    human = method_runs(results, reference.get("human"))
    out = {"human_test_acc": mean_spread([r["rows"][-1]["test_acc"] for r in human])[0] if human else None}
    if not human or not {"rlthf", "random", "ai_only"} <= set(reference):
        return out
    for role in ("rlthf", "random"):
        runs = method_runs(results, reference[role])
        out[f"{role}_reaches_human_at_pct"] = reaches(runs, out["human_test_acc"]) if runs and human else None
    rows = {r["method"]: r for r in summary_rows(results, [reference["rlthf"]], reference)}
    out["rlthf_roi_over_random"] = rows.get(reference["rlthf"], {}).get("roi_over_random")
    return out


def plot_group(results: dict, names: list[str], path: Path, title: str, key: str = "test_acc",
               lines: tuple[str, ...] = ()) -> None:
    """Mean (band: ± one standard deviation) of ``key`` over the seeds against % of the corpus human-labelled,
    one curve per method; the methods in ``lines`` (AI-only, Human) are drawn as dashed horizontal lines at their
    final value, so that Human's 25% does not squeeze the other curves into a corner."""
    from rlthf.run.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        runs = method_runs(results, name)
        if not runs:
            continue
        pct, mean, spread = curve(runs, key)
        if name in lines:
            ax.axhline(100 * mean[-1], ls="--", lw=1.2, color="grey" if pct[-1] == 0 else "black",
                       label=f"{name} ({pct[-1]:.1f}% human)")
            continue
        line, = ax.plot(pct, 100 * mean, "o-", ms=3, label=name)
        ax.fill_between(pct, 100 * (mean - spread), 100 * (mean + spread), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("human labels, % of the corpus")
    ax.set_ylabel({"test_acc": "test preference accuracy (%)", "label_acc": "shard label accuracy (%)"}[key])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paired_interval(differences) -> Optional[tuple[float, float, float]]:
    """Mean of paired differences with a 95% normal interval (mean ± 1.96 standard errors); None without any."""
    values = np.asarray([d for d in differences if d is not None], dtype=float)
    if not len(values):
        return None
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def asked_wrong(run: dict) -> Optional[float]:
    """Share of the targeted human answers (iterations 1..K) that corrected a wrong working label."""
    rows = run["rows"][1:]
    asked = sum(r.get("asked", 0) for r in rows)
    return sum(r.get("batch_was_wrong", 0) for r in rows) / asked if asked else None


def audit_covers(run: dict) -> Optional[bool]:
    """Whether the audit's 95% interval for the curated labels holds their true accuracy; None without an audit."""
    estimate = run["summary"].get("estimate", {}).get("curated")
    return None if estimate is None else estimate["low"] <= run["summary"]["curated_label_acc"] <= estimate["high"]


def not_below_ai(run: dict) -> Optional[bool]:
    """Whether the curated labels are at least as accurate as the AI labels, on the pairs the AI labelled."""
    summary = run["summary"]
    if "curated_label_acc_where_ai" not in summary:
        return None
    return summary["curated_label_acc_where_ai"] >= summary["ai_label_acc_corpus"]


def count_true(values) -> Optional[tuple[int, int]]:
    """(how many are True, how many are not None); None when none is."""
    known = [v for v in values if v is not None]
    return (sum(known), len(known)) if known else None


def budget_rows(results: dict, config: ExperimentConfig, budget: str) -> list[dict]:
    """Per method at ``budget``: curated accuracy, share of asked pairs wrong, test accuracy, gain over AI-only,
    its ratio to Random's, the paired differences to RLTHF (curated) and to Human (RM test accuracy), each over
    the seeds; and in how many seeds the audit's
    interval held the true curated accuracy and the curated labels were not below the AI labels."""
    ref = config.reference
    at = lambda name: {r["seed"]: r for r in method_runs(results, name)}  # noqa: E731
    ai, random_ = at(ref.get("ai_only")), at(f"{ref.get('random')}{BUDGET_MARK}{budget}")
    rlthf = at(f"{ref.get('rlthf')}{BUDGET_MARK}{budget}")
    human = at(ref.get("human"))
    curated = lambda r: r["summary"]["curated_label_acc"]  # noqa: E731
    test_acc = lambda r: r["rows"][-1]["test_acc"]  # noqa: E731

    def gain_over_ai(runs: dict) -> Optional[tuple[float, float, float]]:
        return paired_interval(curated(r) - curated(ai[s]) for s, r in runs.items() if s in ai)

    rows = []
    for name in dict.fromkeys(n.split(BUDGET_MARK)[0] for n in config.methods):
        runs = at(f"{name}{BUDGET_MARK}{budget}") or (at(name) if name in config.budget_free else {})
        if not runs:
            continue
        gain = gain_over_ai(runs)
        # Random's gain on the same seeds: methods run over different seed sets still compare like with like
        random_gain = gain_over_ai({s: r for s, r in random_.items() if s in runs})
        rows.append({"method": name, "seeds": len(runs),
                     "curated": paired_interval(curated(r) for r in runs.values()),
                     "asked_wrong": paired_interval(asked_wrong(r) for r in runs.values()),
                     "test_acc": paired_interval(test_acc(r) for r in runs.values()),
                     "test_vs_human": paired_interval(test_acc(r) - test_acc(human[s]) for s, r in runs.items()
                                                      if s in human),
                     "gain": gain,
                     "vs_random": gain[0] / random_gain[0] if gain and random_gain and random_gain[0] > 0 else None,
                     "vs_rlthf": paired_interval(curated(r) - curated(rlthf[s]) for s, r in runs.items()
                                                 if s in rlthf),
                     "audit_covers": count_true(audit_covers(r) for r in runs.values()),
                     "not_below_ai": count_true(not_below_ai(r) for r in runs.values())})
    return rows


def budget_table(rows: list[dict]) -> str:
    def ci(v, signed=False):
        if v is None:
            return "-"
        sign = "+" if signed else ""
        if not np.isfinite(v[1]):  # one seed: no interval
            return f"{100 * v[0]:{sign}.1f}"
        return f"{100 * v[0]:{sign}.1f} [{100 * v[1]:{sign}.1f}, {100 * v[2]:{sign}.1f}]"

    def share(v):
        return "-" if v is None else f"{v[0]}/{v[1]}"

    lines = ["| method | seeds | curated label acc % [95% CI] | asked pairs wrong % | RM test acc % | gain over "
             "AI-only, pts | gain / Random's | curated - RLTHF's, pts (paired) | RM test acc - Human's, pts (paired) | "
             "audit interval holds the truth | curated >= AI labels |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["vs_random"] is None else f"{r['vs_random']:.1f}x"
        lines.append(f"| {r['method']} | {r['seeds']} | {ci(r['curated'])} | {ci(r['asked_wrong'])} | "
                     f"{ci(r['test_acc'])} | {ci(r['gain'], True)} | {ratio} | {ci(r['vs_rlthf'], True)} | "
                     f"{ci(r['test_vs_human'], True)} | "
                     f"{share(r['audit_covers'])} | {share(r['not_below_ai'])} |")
    return "\n".join(lines)


def plot_budgets(results: dict, config: ExperimentConfig, path: Path) -> None:
    """Curated-label accuracy against the budget, a line per method (mean, 95% band); budget-free methods as
    dashed horizontal lines."""
    from rlthf.run.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shares = [100 * budget_share(b) for b in config.budgets]
    curated = {b: {r["method"]: r["curated"] for r in budget_rows(results, config, b)} for b in config.budgets}
    for row in budget_rows(results, config, config.budgets[0]):
        name = row["method"]
        if name in config.budget_free:
            ax.axhline(100 * row["curated"][0], ls="--", lw=1.2, color="grey", label=f"{name} (no budget)")
            continue
        points = [curated[b].get(name) for b in config.budgets]
        xs = [x for x, p in zip(shares, points) if p]
        ys = np.array([p for p in points if p]) * 100
        line, = ax.plot(xs, ys[:, 0], "o-", ms=3, label=name)
        ax.fill_between(xs, ys[:, 1], ys[:, 2], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("human-label budget, % of the corpus")
    ax.set_ylabel("curated label accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget_section(results: dict, config: ExperimentConfig) -> list[str]:
    """The report's budget section: a table per budget and the curated-accuracy figure."""
    if not config.budgets:
        return []
    plot_budgets(results, config, Path(config.output_dir) / "curated_vs_budget.png")
    lines = ["## Curated labels by budget", "",
             "Means over the seeds with 95% intervals (mean ± 1.96 standard errors); gains and differences are "
             "paired by seed (*gain / Random's*: over Random's gain on the same seeds). *asked pairs wrong*: the "
             "share of targeted human answers that corrected a wrong working label (the eyes-off check and the "
             "audit not counted). *audit interval holds the truth*: seeds where the audit's 95% interval for the "
             "curated accuracy held the true one. *curated >= AI labels*: seeds where the curated labels were at "
             "least as accurate as the AI labels on the pairs the AI labelled.", "",
             "![curated label accuracy against the budget](curated_vs_budget.png)", ""]
    for budget in config.budgets:
        lines += [f"### Budget {budget} of the corpus", "", budget_table(budget_rows(results, config, budget)), ""]
    return lines


def write_report(config: ExperimentConfig, results: dict) -> Path:
    out = Path(config.output_dir)
    ref = config.reference
    seeds = sorted({r["seed"] for r in results.values()})
    groups = config.groups or {"methods": list(config.methods)}
    lines = [f"# Experiment report ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
             f"Base config `{Path(config.base).name}`"
             + "".join(f" with `{o}`" for o in config.base_overrides)
             + "; every method is the base plus the overrides below, on the "
             "same split, shard, AI labels and seed. Tables: the last iteration, mean ± sample standard deviation "
             "over the seeds. ROI: test-accuracy gain over AI-only (same seed) per 1% of the corpus human-labelled; "
             "ROI / Random: that over Random's mean ROI. Figures: every iteration, mean over the seeds (band: ± "
             "one standard deviation).", ""]
    h = headline(results, ref)
    if "rlthf_roi_over_random" in h:
        def at(name, v):
            return f"{name} does not reach it within its budget" if v is None else \
                f"{name} reaches it at {v:.2f}% of the corpus human-labelled"
        lines += ["## Headline", "",
                  f"- Human (every shard pair human-labelled): test accuracy {100 * h['human_test_acc']:.1f}%.",
                  f"- {at(ref['rlthf'], h['rlthf_reaches_human_at_pct'])}; "
                  f"{at(ref['random'], h['random_reaches_human_at_pct'])}.",
                  f"- {ref['rlthf']}'s ROI over {ref['random']}: " + (
                      "undefined: Random's mean ROI is not above zero by one standard error"
                      if h["rlthf_roi_over_random"] is None
                      else f"{h['rlthf_roi_over_random']:.1f}x"), ""]
    lines += budget_section(results, config)
    for group, names in groups.items():
        slug = re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")
        png = f"{slug}_test_acc.png"
        flat = tuple(ref[role] for role in ("ai_only", "human") if role in ref)
        plot_group(results, names, out / png, f"{group}: test accuracy vs human labels ({len(seeds)} seeds)",
                   lines=flat)
        png_label = f"{slug}_label_acc.png"
        plot_group(results, names, out / png_label, f"{group}: shard label accuracy vs human labels",
                   key="label_acc", lines=flat)
        lines += [f"## {group}", "", markdown_table(summary_rows(results, names, ref)), "",
                  f"![{group}: test accuracy]({png})", f"![{group}: shard label accuracy]({png_label})", ""]
    lines += ["## Methods", "", "| method | overrides of the base config |", "|---|---|"]
    lines += [f"| {name} | {'<br>'.join(f'`{o}`' for o in ov) or '(none)'} |" for name, ov in config.methods.items()]
    total = sum(r["wall_s"] for r in results.values())
    lines += ["", "## Runs", "", f"{len(results)} runs, {total / 60:.1f} minutes of wall time in all.", "",
              "| method | seed | iterations | human labels | human % corpus | test acc | wall s |", "|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (list(config.methods).index(r["method"])
                                                     if r["method"] in config.methods else 99, r["seed"])):
        last = r["rows"][-1]
        lines.append(f"| {r['method']} | {r['seed']} | {len(r['rows']) - 1} | {last['human_labels']} | "
                     f"{last['human_pct_corpus']:.2f} | {100 * last['test_acc']:.1f}% | {r['wall_s']:.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
