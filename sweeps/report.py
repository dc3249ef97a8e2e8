"""The sweep's comparison: the per-configuration summary over seeds, the paired differences of
every non-reference arm of an axis to its reference arm (bootstrap and t 95% intervals over the
shared seeds, the t test's p value corrected for the sweep's comparisons, a verdict and the seeds an
unanswered comparison would need), and the files written from them (CSV, Markdown, PNG). The
statistics themselves are in sweeps/significance.py.

What is compared is a list of the metric registry's columns (`cgsgan.metrics.evaluation.Column`,
each with which way is better, from `compared_metrics`); the first is the headline (each trial's
verdict in the table is on it). Rows are plain dicts, one per trial: the axis values, "seed",
"config" (the trial's key without the seed), "trial", the metrics under their reported names
(`reported(column)`, "metrics/fid_synth") and "error".
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cgsgan.metrics.evaluation import Better, Column
from cgsgan.training.ticks import metric_key, metric_stats
from sweeps import significance
from sweeps.significance import ALPHA, POWER

# Also in the per-trial table and the CSV, beside the compared columns and the floors.
EXTRA = ["loss/G", "loss/D"]

MIN_PAIRS = 3  # below this a bootstrap interval over pairs is degenerate: no verdict is given
CONFIDENCE = 0.95


class Verdict(StrEnum):
    better = "better"
    worse = "worse"
    not_separated = "not separated"
    equivalent = "equivalent within margin"
    too_few_seeds = "too few seeds"
    reference = "reference"


@dataclass
class Difference:
    """One arm against its axis's reference arm on one metric: arm minus reference, paired by
    (seed, the other axes' values); `low`, `high` the bootstrap interval and `t_low`, `t_high`
    the paired t interval (None below MIN_PAIRS)."""

    axis: str
    arm: str
    reference: str
    metric: Column
    pairs: int
    mean: float | None
    low: float | None
    high: float | None
    verdict: Verdict
    t_low: float | None = None
    t_high: float | None = None
    values: tuple[float, ...] = ()  # arm - reference of each pair
    p: float | None = None  # the paired t test's two-sided p value
    p_adjusted: float | None = None  # Holm's, over the comparisons judged at the same look
    level: float = ALPHA  # what p_adjusted is held against (the look's share of ALPHA)
    look: int = 1  # the round of seeds whose look gave the verdict
    margin: float | None = None  # sweep.margin for this metric: the equivalence test's bounds
    tost_p: float | None = None
    tost_adjusted: float | None = None
    seeds_needed: int | None = None  # unanswered: pairs for 80% power at the observed difference
    family: int = 0  # the distinct tests Holm corrected over at its look

    @property
    def key(self) -> tuple[str, str, str]:
        return self.axis, self.arm, self.metric.key


def reported(c: Column) -> str:
    """The name a trial reports a column under (metrics/<key>)."""
    return metric_key(c.key)


def floors(rows: list[dict]) -> list[str]:
    """The floors the trials reported (real-vs-held-out distances, one per FID): shown beside the
    metrics so a reader sees how far from a perfect generator each value is."""
    return sorted({k for r in rows for k in metric_stats(r) if k.endswith("_floor")})


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _plain(v):
    return v.value if isinstance(v, StrEnum) else v


def summarize(rows: list[dict], columns: list[Column]) -> list[dict]:
    """Per configuration (trials that differ only in the seed): the number of seeds that finished
    and, for each compared metric, (mean, spread, values) over them; the spread is the sample
    standard deviation (None with one value)."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["trial"]):
        groups.setdefault(r["config"], []).append(r)
    out = []
    for key, group in groups.items():
        done = [r for r in group if not r.get("error")]
        entry = {"config": key, "seeds": len(done), "failed": len(group) - len(done)}
        for c in columns:
            values = [v for r in done if (v := _number(r.get(reported(c)))) is not None]
            mean = statistics.fmean(values) if values else None
            spread = statistics.stdev(values) if len(values) > 1 else None
            entry[reported(c)] = (mean, spread, values)
        out.append(entry)
    return out


def interval(arm: list[float], reference: list[float], seed: int = 0) -> tuple[float, float]:
    """The paired bootstrap interval (CONFIDENCE, percentile method) of mean(arm - reference).
    Differences that are all equal have no spread to resample: the interval is that value."""
    import numpy as np
    from scipy.stats import bootstrap

    a, b = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    if np.ptp(a - b) == 0:
        return float(a[0] - b[0]), float(a[0] - b[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that few pairs make a coarse distribution
        res = bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                        confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(arm: list[float], reference: list[float]) -> tuple[float, float]:
    """The paired Student t interval (CONFIDENCE) of mean(arm - reference) (scipy.stats.ttest_rel);
    differences that are all equal: that value."""
    import numpy as np
    from scipy.stats import ttest_rel

    a, b = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    if np.ptp(a - b) == 0:
        return float(a[0] - b[0]), float(a[0] - b[0])
    ci = ttest_rel(a, b).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def verdict(metric: Column, pairs: int, *intervals: tuple[float | None, float | None]) -> Verdict:
    """better / worse where every interval excludes no difference on the same side; else not
    separated. Why two intervals: with few pairs the percentile bootstrap is too narrow (with 3 it
    spans the smallest to the largest paired difference, so three differences of one sign, which
    noise alone gives 1 time in 4, would count as a result); the t interval accounts for the few
    pairs (t with n - 1 degrees of freedom) and is exact for normal differences."""
    if pairs < MIN_PAIRS or any(low is None or high is None for low, high in intervals):
        return Verdict.too_few_seeds
    sides = {"above" if low > 0 else "below" if high < 0 else "zero" for low, high in intervals}
    if sides == {"below"} or sides == {"above"}:
        return Verdict.better if (sides == {"below"}) == (metric.better is Better.lower) else Verdict.worse
    return Verdict.not_separated


def paired_differences(rows: list[dict], axes: dict[str, list], columns: list[Column],
                       margins: dict[str, float] | None = None, level: float = ALPHA, look: int = 1,
                       answered: dict[tuple, Difference] | None = None) -> list[Difference]:
    """For every axis with more than one value, every non-reference arm (the reference is the
    axis's first listed value) against the reference, on each compared metric: the trials are
    paired by seed and the values of the other axes, so seed-to-seed variation cancels. Judged
    together (`judge`) at `level`; `margins` by column key or registry name."""
    done = [r for r in rows if not r.get("error")]
    out = []
    for axis, listed in axes.items():
        values = [_plain(v) for v in listed]
        if len(values) < 2:
            continue
        ref = values[0]
        rest = [a for a in axes if a != axis] + ["seed"]
        reference = {tuple(r[a] for a in rest): r for r in done if r[axis] == ref}
        for arm in values[1:]:
            matched = [(r, reference[k]) for r in done if r[axis] == arm and (k := tuple(r[a] for a in rest)) in reference]
            for m in columns:
                key = reported(m)
                pairs = [(x, y) for r, q in matched
                         if (x := _number(r.get(key))) is not None and (y := _number(q.get(key))) is not None]
                mean = statistics.fmean(x - y for x, y in pairs) if pairs else None
                low = high = t_low = t_high = None
                if len(pairs) >= MIN_PAIRS:
                    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
                    (low, high), (t_low, t_high) = interval(xs, ys), t_interval(xs, ys)
                margin = (margins or {}).get(m.key, (margins or {}).get(m.request))
                out.append(Difference(axis, str(arm), str(ref), m, len(pairs), mean, low, high,
                                      verdict(m, len(pairs), (low, high), (t_low, t_high)), t_low, t_high,
                                      tuple(x - y for x, y in pairs), margin=margin))
    return judge(out, level, look, answered)


def _same(d: Difference) -> tuple:
    """Comparisons with the same arm and the same paired differences are one test (FID3D is FID
    for a camera-free generator): counted once in the family."""
    return d.axis, d.arm, tuple(round(v, 9) for v in d.values)


def judge(differences: list[Difference], level: float = ALPHA, look: int = 1,
          answered: dict[tuple, Difference] | None = None) -> list[Difference]:
    """The verdicts of one look. Those in `answered` (by Difference.key, from an earlier look)
    keep their verdict; the rest are open: Holm over their distinct paired t tests at `level`
    (differences all exactly 0 are no test: a metric equal by construction), better or worse
    where the adjusted p is at most `level` and the bootstrap interval excludes 0 on the same
    side; equivalent within margin where both intervals lie inside +-margin and Holm's adjusted
    equivalence p is at most `level`; an open one left unanswered gets the seeds a paired t test
    at ALPHA / (the family's size) would need to detect its observed difference with 80% power."""
    answered = answered or {}
    open_ = [d for d in differences if d.key not in answered and d.pairs >= MIN_PAIRS and d.low is not None]
    judged = {id(d) for d in open_}
    tests = {_same(d): significance.t_p(d.values) for d in open_ if any(v != 0 for v in d.values)}
    equiv = {_same(d): significance.tost_p(d.values, d.margin) for d in open_ if d.margin}
    decisions = significance.decide(tests, level, equiv)
    family = max(len(tests), 1)
    for d in differences:
        if d.key in answered:
            was = answered[d.key]
            d.verdict, d.p_adjusted, d.level, d.look = was.verdict, was.p_adjusted, was.level, was.look
            d.p, d.tost_p, d.tost_adjusted, d.family = was.p, was.tost_p, was.tost_adjusted, was.family
            continue
        if id(d) not in judged:
            continue
        d.look, d.level, d.family = look, level, family
        found = decisions.get(_same(d))
        d.p = tests.get(_same(d))  # None: differences all 0, no test
        d.p_adjusted = found.p_adjusted if found else None
        if d.margin:
            d.tost_p = equiv[_same(d)]
            d.tost_adjusted = found.tost_adjusted if found else significance.holm_by_key(equiv)[_same(d)]
        separated = d.p_adjusted is not None and d.p_adjusted <= level and d.verdict in (Verdict.better, Verdict.worse)
        inside = d.margin is not None and all(-d.margin < x < d.margin for x in (d.low, d.high, d.t_low, d.t_high))
        if separated:
            continue  # the intervals' verdict stands
        if inside and d.tost_adjusted is not None and d.tost_adjusted <= level:
            d.verdict = Verdict.equivalent
        else:
            d.verdict = Verdict.not_separated
            sd = statistics.stdev(d.values)
            if sd > 0 and d.mean:
                d.seeds_needed = significance.seeds_needed(abs(d.mean) / sd, ALPHA / family)
    return differences


def trial_verdict(row: dict, axes: dict[str, list], differences: list[Difference], headline: Column) -> str:
    """What the comparison says about this trial's arms on the headline metric: "reference" for
    the reference arm of every axis, else e.g. "camera_mode=d_none: worse"."""
    found = {(d.axis, d.arm): d.verdict for d in differences if d.metric == headline}
    parts = [f"{axis}={row[axis]}: {found[(axis, str(row[axis]))]}" for axis in axes
             if (axis, str(row[axis])) in found]
    return "; ".join(parts) or Verdict.reference.value


def trial_columns(axes: list[str], columns: list[Column], rows: list[dict] = ()) -> list[str]:
    return ["trial", *axes, "seed", "kimg", *map(reported, columns), *floors(list(rows)), *EXTRA, "verdict", "error"]


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)


def differences_table(differences: list[Difference]) -> list[dict]:
    """The differences as plain rows (the Markdown table, the parent run's MLflow table)."""
    return [{"axis": d.axis, "arm": d.arm, "reference": d.reference, "metric": d.metric.label, "key": d.metric.key,
             "better": d.metric.better.value, "pairs": d.pairs, "difference": d.mean,
             "ci_low": d.low, "ci_high": d.high, "t_low": d.t_low, "t_high": d.t_high, "p": d.p,
             "p_holm": d.p_adjusted, "level": d.level, "look": d.look, "margin": d.margin, "tost_p_holm": d.tost_adjusted,
             "verdict": d.verdict.value, "seeds_needed": d.seeds_needed} for d in differences]  # fmt: skip


def write_report(rows: list[dict], axes: dict[str, list], out: Path, columns: list[Column],
                 margins: dict[str, float] | None = None, differences: list[Difference] | None = None,
                 rounds: str = "") -> list[Path]:
    """comparison.csv (every trial, with its verdict), comparison.md (per configuration: mean ±
    spread over seeds; the paired differences with intervals, Holm's p and verdicts; every trial),
    comparison.png (the same two views) and differences.json. `rows` gain their "verdict".
    `differences`: as judged by a sequential sweep over its rounds (`rounds` says how), else
    judged here at one look."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["trial"])
    if differences is None:
        differences = paired_differences(rows, axes, columns, margins)
    for r in rows:
        r["verdict"] = trial_verdict(r, axes, differences, columns[0])
    cols = trial_columns(list(axes), columns, rows)
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({c: r.get(c) for c in cols} for r in rows)

    def mean_spread(mean, spread, _values):
        if mean is None:
            return "-"
        return fmt(mean) if spread is None else f"{fmt(mean)} ± {fmt(spread)}"

    summary = summarize(rows, columns)
    head = ["configuration", "seeds", *(m.label for m in columns)]
    directions = "; ".join(f"{m.label}: {m.better.value}" for m in columns)
    md = [f"Mean ± standard deviation over seeds. Which way is better: {directions} (sensitivity 0 and "
          "psnr_cond 100 dB for a camera-free generator).", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for e in summary:
        seeds = str(e["seeds"]) + (f" ({e['failed']} failed)" if e["failed"] else "")
        md.append("| " + " | ".join([e["config"], seeds, *(mean_spread(*e[reported(m)]) for m in columns)]) + " |")
    table = differences_table(differences)
    if table:
        dcols = ["axis", "arm", "reference", "metric", "better", "pairs", "difference", "bootstrap interval",
                 "t interval", "p (Holm)", "verdict", f"seeds for {POWER:.0%} power"]  # fmt: skip
        family = max(d.family for d in differences)
        margins_used = sorted({f"{d.metric.key} ±{fmt(d.margin)}" for d in differences if d.margin})
        md += ["", f"Each arm against its axis's reference arm (the first value listed): the mean of arm − reference "
               f"over pairs of trials with the same seed and other axes, its paired bootstrap {CONFIDENCE:.0%} "
               f"interval (scipy.stats.bootstrap, paired, percentile), its paired t interval (scipy.stats.ttest_rel), "
               "the paired t test's p and, in brackets, Holm's adjusted p over the sweep's distinct comparisons "
               "(an arm's metrics with identical differences count once; differences all exactly 0 are no test), "
               f"and the verdict: better or worse where Holm's p is at most {ALPHA:g} and both intervals exclude 0 "
               "(so the chance of any false verdict in the table stays under 5%), "
               + (f"equivalent within margin where both intervals lie inside ±margin and Holm's p of the two "
                  f"one-sided tests is at most {ALPHA:g} (margins: {', '.join(margins_used)}), " if margins_used else "")
               + f"else not separated; below {MIN_PAIRS} pairs no interval and no verdict (too few seeds). "
               f"Where not separated: the pairs a paired t test at {ALPHA:g}/{family} (Holm's strictest step) "
               f"would need to detect the observed difference with {POWER:.0%} power, if it were the true one."
               + (f" {rounds}" if rounds else ""), "",
               "| " + " | ".join(dcols) + " |", "|" + "---|" * len(dcols)]  # fmt: skip

        def span(low, high):
            return "-" if low is None else f"[{fmt(low)}, {fmt(high)}]"

        def pvalue(d):
            if d["p"] is None:
                return "-"
            at = f", round {d['look']} at {fmt(d['level'])}" if d["level"] != ALPHA else ""
            return f"{d['p']:.2g} ({d['p_holm']:.2g}{at})"

        for d in table:
            md.append("| " + " | ".join([d["axis"], d["arm"], d["reference"], d["metric"], d["better"], str(d["pairs"]),
                                         fmt(d["difference"]), span(d["ci_low"], d["ci_high"]),
                                         span(d["t_low"], d["t_high"]), pvalue(d), d["verdict"],
                                         fmt(d["seeds_needed"])]) + " |")  # fmt: skip
    else:
        md += ["", "No axis has more than one value: no arm to compare."]
    md += ["", "Every trial:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    plot(summary, differences, out / "comparison.png", columns)
    (out / "comparison.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "differences.json").write_text(json.dumps(table, indent=1))
    return [out / "comparison.csv", out / "comparison.md", out / "comparison.png"]


def plot(summary: list[dict], differences: list[Difference], path: Path, columns: list[Column]) -> None:
    """One column per metric. Top: the configurations, mean ± std over seeds (orange) and the
    seeds (blue). Bottom (when an axis has arms): each arm − reference with its interval, coloured
    by verdict, and the zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys((d.axis, d.arm, d.reference) for d in differences))
    rows = 2 if arms else 1
    heights = [max(2.8, 0.45 * len(summary) + 1.6)] + ([max(2.0, 0.45 * len(arms) + 1.2)] if arms else [])
    fig, axes = plt.subplots(rows, len(columns), figsize=(3.0 * len(columns), sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    for col, m in enumerate(columns):
        ax = axes[0][col]
        for i, e in enumerate(summary):
            mean, spread, values = e[reported(m)]
            ax.scatter(values, [i] * len(values), color="C0", alpha=0.45, s=14, zorder=2)
            if mean is not None:
                ax.errorbar(mean, i, xerr=spread or 0.0, fmt="o", color="C1", capsize=4, zorder=3)
        ax.set_title(f"{m.label}\n({m.better.value} is better)", fontsize=9)
        ax.set_yticks(range(len(summary)), [f"{e['config']} (n={e['seeds']})" for e in summary] if col == 0 else [],
                      fontsize=8)  # fmt: skip
        ax.set_ylim(len(summary) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        if not arms:
            continue
        ax = axes[1][col]
        colours = {Verdict.better: "C2", Verdict.worse: "C3", Verdict.equivalent: "C0"}
        for i, (axis, arm, ref) in enumerate(arms):
            d = next(d for d in differences if (d.axis, d.arm, d.metric) == (axis, arm, m))
            if d.mean is None:
                continue
            if d.low is not None:
                colour = colours.get(d.verdict, "C7")
                ax.hlines(i, d.t_low, d.t_high, color=colour, alpha=0.3, lw=6)  # the t interval, shaded
                ax.errorbar(d.mean, i, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=4,
                            color=colour)  # fmt: skip
            else:  # too few pairs: the mean difference alone, hollow
                ax.scatter([d.mean], [i], facecolors="none", edgecolors="C7", zorder=3)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_yticks(range(len(arms)), [f"{axis}: {arm} − {ref}" for axis, arm, ref in arms] if col == 0 else [],
                      fontsize=8)  # fmt: skip
        ax.set_ylim(len(arms) - 0.5, -0.5)
        ax.set_title(f"difference, {CONFIDENCE:.0%}: bootstrap (bars), t (shaded)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Ablation at the end of training: configurations over seeds; arms against the reference "
                 "(green better, red worse, blue equivalent, grey not separated / too few seeds)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
