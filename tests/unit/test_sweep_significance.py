"""The statistics of a sweep's verdicts (sweeps/significance.py) and how the report and the sweep
use them: Holm over the comparisons, power before and after, equivalence within a margin, and
seeds in rounds with the error rate spent over the looks. The simulations are seeded and train
nothing: pure noise through the same decision functions the sweep uses."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cgsgan.metrics.evaluation import compared_metrics
from sweeps import ablate, report, significance
from sweeps.report import Verdict, reported
from sweeps.significance import ALPHA, Spending

SWEEPS = 2000  # simulated sweeps: the rate to about +-0.5%, where 100 would leave +-2.2% of noise


def noise_sweeps_with_a_verdict(sweeps: int, comparisons: int, seeds: int, seed: int) -> int:
    """Sweeps of `comparisons` arms that change nothing (paired differences of pure noise) in which
    Holm's correction at ALPHA still calls some comparison separated."""
    p = significance.t_p_rows(np.random.default_rng(seed).normal(size=(sweeps, comparisons, seeds)))
    return sum(any(d.separated for d in significance.decide(dict(enumerate(row)), ALPHA).values()) for row in p)


def test_twenty_comparisons_of_noise_give_a_verdict_in_at_most_five_sweeps_in_a_hundred():
    uncorrected = significance.t_p_rows(np.random.default_rng(0).normal(size=(SWEEPS, 20, 3)))
    assert (uncorrected <= ALPHA).any(axis=1).mean() > 0.5  # each at 5%: most sweeps call something
    rate = noise_sweeps_with_a_verdict(SWEEPS, 20, 3, seed=0) / SWEEPS
    assert rate <= 0.05, rate


def sequential_noise_sweeps_with_a_verdict(sweeps: int, kind: Spending, seed: int, comparisons: int = 20,
                                           per_round: int = 3, looks: int = 4) -> int:
    """Sweeps that look after every round of `per_round` new seeds at the comparisons still open
    (each at the round's share of ALPHA, Holm among them), as sweep.seeds=auto does."""
    d = np.random.default_rng(seed).normal(size=(sweeps, comparisons, per_round * looks))
    called = np.zeros(sweeps, bool)
    for look in range(1, looks + 1):
        p = significance.t_p_rows(d[:, :, : per_round * look])
        level = significance.look_level(look, looks, kind=kind)
        for i in np.flatnonzero(~called):  # nothing is answered in a sweep without a verdict: all stay open
            called[i] = any(x.separated for x in significance.decide(dict(enumerate(p[i])), level).values())
    return int(called.sum())


@pytest.mark.parametrize("kind", list(Spending))
def test_sequential_sweeps_of_noise_keep_the_error_rate_over_their_looks(kind):
    rate = sequential_noise_sweeps_with_a_verdict(SWEEPS, kind, seed=1) / SWEEPS
    assert rate <= 0.05, rate
    # Looking after every round at the full 5% each time would not: the looks add up.
    d = np.random.default_rng(1).normal(size=(SWEEPS, 20, 12))
    naive = np.zeros(SWEEPS, bool)
    for look in range(1, 5):
        p = significance.t_p_rows(d[:, :, : 3 * look])
        naive |= [any(x.separated for x in significance.decide(dict(enumerate(row)), ALPHA).values()) for row in p]
    assert naive.mean() > 0.08


def test_a_real_difference_is_answered_in_the_rounds():
    """The sequential test still finds what is there: a difference of 2 standard deviations among
    noise is separated by the fourth round in most sweeps."""
    rng = np.random.default_rng(2)
    found = 0
    for _ in range(200):
        d = rng.normal(size=(5, 12))
        d[0] += 2.0
        for look in range(1, 5):
            p = significance.t_p_rows(d[:, : 3 * look])
            if significance.decide(dict(enumerate(p)), significance.look_level(look, 4))[0].separated:
                found += 1
                break
    assert found / 200 > 0.8


def test_holm_adjusts_step_down_and_the_spending_adds_up_to_alpha():
    assert significance.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    for kind in Spending:
        shares = [significance.look_level(k, 4, kind=kind) for k in range(1, 5)]
        assert sum(shares) == pytest.approx(ALPHA) and all(s > 0 for s in shares)
    assert significance.look_level(1, 4, kind=Spending.obrien_fleming) < 1e-3  # almost nothing at the first look


def test_power_is_the_noncentral_t_and_seeds_needed_its_inverse():
    # With 3 seeds, 80% power at 5% needs a true difference of 3.26 standard deviations.
    assert significance.detectable(3, ALPHA) == pytest.approx(3.264, abs=1e-3)
    assert significance.power(significance.detectable(3, ALPHA), 3, ALPHA) == pytest.approx(0.8, abs=1e-4)
    n = significance.seeds_needed(1.0, ALPHA)
    assert n == 10 and significance.power(1.0, n, ALPHA) >= 0.8 > significance.power(1.0, n - 1, ALPHA)
    # The old rule, seeds = (1.96 s / |mean|)^2, leaves about half the power.
    old = round((1.96 / 1.0) ** 2)
    assert significance.power(1.0, old, ALPHA) < 0.6
    # a strict level far in the noncentral t's tail (scipy gives NaN there)
    assert 7.9 < significance.detectable(3, ALPHA / 6) < 8.2
    # monte carlo: the power is what simulated paired t tests achieve
    p = significance.t_p_rows(np.random.default_rng(3).normal(1.0, 1.0, size=(4000, 10)))
    assert (p <= ALPHA).mean() == pytest.approx(significance.power(1.0, 10, ALPHA), abs=0.03)


# ------------------------------------------------------------------------------ in the report
COLUMNS = compared_metrics("synth", ["fid", "fid3d", "sensitivity", "psnr_cond"])
FID = reported(COLUMNS[0])
AXES = {"views": [4], "grad_averaging": [True], "camera_mode": ["d_projection", "d_none", "g_conditioned"],
        "background": ["random"]}  # fmt: skip


def rows(diffs_by_arm: dict[str, list[float]], metric: str = FID) -> list[dict]:
    out = []
    for arm, diffs in {"d_projection": [0.0] * len(next(iter(diffs_by_arm.values()))), **diffs_by_arm}.items():
        for s, d in enumerate(diffs):
            axes = {"views": 4, "grad_averaging": True, "camera_mode": arm, "background": "random", "seed": s}
            base = {FID: 100.0 * s, "metrics/fid3d_synth": 100.0 * s, "metrics/sensitivity": 0.0,
                    "metrics/psnr_cond": 100.0}  # fmt: skip
            base[metric] += d
            base["metrics/fid3d_synth"] = base[FID]  # a camera-free generator: FID3D is FID
            out.append({**axes, "config": ablate.config_key(axes), "trial": ablate.trial_key(axes), **base,
                        "error": ""})  # fmt: skip
    return out


def test_the_report_corrects_for_its_comparisons_and_says_the_seeds_an_open_one_needs(tmp_path):
    # d_none: +5 +- 0.4 over 4 seeds, far past the correction; each of two +1 differences with p
    # about 0.03 alone is a verdict, but not both after Holm's correction for the two of them
    data = rows({"d_none": [5.0, 5.5, 4.6, 5.2], "g_conditioned": [1.1, 0.4, 1.7, 0.9]})
    strong = next(d for d in report.paired_differences(data, AXES, COLUMNS) if d.arm == "d_none")
    assert strong.verdict == Verdict.worse and strong.p_adjusted <= ALPHA and strong.seeds_needed is None
    data = rows({"d_none": [0.9, 1.7, 0.4, 1.1], "g_conditioned": [1.1, 0.4, 1.7, 0.9]})
    found = {(d.arm, d.metric.key): d for d in report.paired_differences(data, AXES, COLUMNS)}
    weak = found[("g_conditioned", "fid_synth")]
    assert weak.p < ALPHA < weak.p_adjusted and weak.verdict == Verdict.not_separated
    assert 0 < weak.t_low  # the uncorrected t interval excludes 0: the old rule would have called it
    # FID3D has the same differences as FID here: one test, counted once (2 distinct tests in all)
    assert found[("d_none", "fid3d_synth")].p_adjusted == found[("d_none", "fid_synth")].p_adjusted
    assert weak.family == 2 and weak.p_adjusted == pytest.approx(2 * weak.p)
    # metrics equal by construction are no test
    assert found[("d_none", "psnr_cond")].p is None and found[("d_none", "psnr_cond")].verdict == Verdict.not_separated
    sd = np.std(weak.values, ddof=1)
    assert weak.seeds_needed == significance.seeds_needed(abs(weak.mean) / sd, ALPHA / 2) and weak.seeds_needed > 4
    table = report.write_report(data, AXES, tmp_path, COLUMNS)[1].read_text()
    assert "| p (Holm) | verdict | seeds for 80% power |" in table
    assert f"| {weak.p:.2g} ({weak.p_adjusted:.2g}) | not separated | {weak.seeds_needed} |" in table


def test_a_margin_makes_an_arm_that_changes_nothing_equivalent(tmp_path):
    data = rows({"d_none": [0.1, -0.2, 0.05, 0.1, -0.1, 0.0], "g_conditioned": [3.0, -2.0, 4.0, -3.0, 1.0, 2.5]})
    found = {d.arm: d for d in report.paired_differences(data, AXES, COLUMNS[:1], margins={"fid": 1.0})}
    level, wide = found["d_none"], found["g_conditioned"]
    assert level.verdict == Verdict.equivalent and -1 < level.t_low and level.t_high < 1 and level.tost_adjusted <= ALPHA
    assert wide.verdict == Verdict.not_separated  # its intervals reach past +-1
    none = {d.arm: d for d in report.paired_differences(data, AXES, COLUMNS[:1])}
    assert none["d_none"].verdict == Verdict.not_separated  # without a margin, no equivalence
    table = report.write_report(data, AXES, tmp_path, COLUMNS[:1], margins={"fid_synth": 1.0})[1].read_text()
    assert "| equivalent within margin |" in table and "fid_synth ±1" in table


def test_answered_comparisons_keep_the_verdict_of_their_round():
    first = rows({"d_none": [5.0, 5.5, 4.6], "g_conditioned": [1.0, -1.0, 0.5]})
    one = report.paired_differences(first, AXES, COLUMNS[:1], level=0.02, look=1)
    answered = {d.key: d for d in one if d.verdict == Verdict.worse}
    assert set(answered) == {("camera_mode", "d_none", "fid_synth")}
    more = rows({"d_none": [5.0, 5.5, 4.6, -9.0, 9.0, 0.0], "g_conditioned": [1.0, -1.0, 0.5, 0.2, -0.3, 0.1]})
    two = {d.arm: d for d in report.paired_differences(more, AXES, COLUMNS[:1], level=0.01, look=2, answered=answered)}
    assert two["d_none"].verdict == Verdict.worse and two["d_none"].look == 1 and two["d_none"].level == 0.02
    assert two["g_conditioned"].look == 2 and two["g_conditioned"].family == 1  # Holm over the open ones only


# ------------------------------------------------------------------------------- in the sweep
def sweep_config(*overrides):
    with initialize_config_dir(config_dir=str(ablate.SPREADS.parent / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("ablate", overrides=list(overrides)))


def test_the_sweep_states_its_power_before_training_from_the_measured_spreads(monkeypatch):
    cfg = sweep_config()
    columns = ablate.compared_columns(cfg)
    source, sd = ablate.measured_spreads(cfg.sweep)
    assert source and set(sd) >= {c.key for c in columns}  # every default column has its measured spread
    # A column without one (here geometry, taken out): its line says so in standard deviations.
    sd = {k: v for k, v in sd.items() if k != "geometry"}
    monkeypatch.setattr(ablate, "measured_spreads", lambda axes: (source, sd))
    lines = ablate.opening(cfg, ablate.trials(cfg.sweep), columns, concurrent=1)
    power = lines[lines.index(next(x for x in lines if x.startswith("  power"))):]
    n = len(columns)
    assert f"level 0.05/{n}" in power[0] and "sweeps/spreads.json" in power[0]
    d = significance.detectable(3, ALPHA / n)
    assert any(x.startswith("    geometry:") and "(spread not measured)" in x for x in power)
    assert f"    fid_synth: detectable from {d * sd['fid_synth']:.4g} ({d:.3g} x sd {sd['fid_synth']:.4g}) with 3 seeds" \
        in power  # fmt: skip
    auto = sweep_config("sweep.seeds=auto", "sweep.max_rounds=3")
    line = next(x for x in ablate.opening(auto, ablate.trials(auto.sweep), columns, 1) if "fid_synth:" in x)
    assert "after 3 rounds (9 seeds)" in line


def test_seeds_auto_runs_rounds_of_new_seeds_for_the_open_comparisons_only():
    cfg = sweep_config("sweep=paper", "sweep.seeds=auto", "sweep.seeds_per_round=2")
    assert {t["seed"] for t in ablate.trials(cfg.sweep)} == {0, 1} and len(ablate.trials(cfg.sweep)) == 12
    second = ablate.round_trials(cfg.sweep, 2, {("views", "1"), ("background", "white")})
    assert {t["seed"] for t in second} == {2, 3}
    assert {ablate.config_key(t) for t in second} == {
        "v4-avg1-d_projection-bgrandom", "v1-avg1-d_projection-bgrandom", "v4-avg1-d_projection-bgwhite"}
    with pytest.raises(ablate.ConfigError, match="sweep.seeds='sevens'"):
        ablate.trials(sweep_config("sweep.seeds=sevens").sweep)
    with pytest.raises(ablate.ConfigError, match="sweep.margin.fid=-1.0: must be > 0"):
        ablate.compared_columns(sweep_config("sweep.margin.fid=-1"))
    assert ablate.margins(sweep_config("sweep.margin.fid=50").sweep) == {"fid": 50.0}


def test_every_axis_is_one_row_of_the_table_with_its_question():
    """An axis is one row (name, config key, tag, question): the sweep's list, its trial-key tag
    and the opening line's question all come from it."""
    names = [a.name for a in ablate.AXIS_TABLE]
    assert list(ablate.AXES) == names and len(set(names)) == len(names)
    fields = {f.name for f in __import__("dataclasses").fields(ablate.SweepAxes)}
    assert set(names) <= fields and all(a.question.strip() and a.key for a in ablate.AXIS_TABLE)
    every = [f"sweep.{a.name}=[{','.join(str(v.value if hasattr(v, 'value') else v).lower() for v in a.default)}"
             f",{'2' if a.type is int else 'false' if a.type is bool else 'd_none' if a.name == 'camera_mode' else 'white'}]"
             for a in ablate.AXIS_TABLE]  # fmt: skip
    cfg = sweep_config(*every)
    first = ablate.opening(cfg, ablate.trials(cfg.sweep), ablate.compared_columns(cfg), 1)[0]
    for a in ablate.AXIS_TABLE:
        assert a.question in first, a.name


class Tracked:
    def __init__(self):
        self.metrics = []

    def log_metrics(self, metrics, step, timestamp_ms):
        self.metrics.append((step, metrics))


def test_seeds_auto_adds_rounds_until_answered_within_its_budget(monkeypatch):
    """The rounds without Ray: each round's trials come from a stand-in for the Tune experiment;
    views=1 is 50 worse in every seed (answered in round 1), d_none only noise (open to the end)."""
    rounds = []

    def tune_round(cfg, grid, trial_cfgs, common, output_dir, name, concurrent, columns):
        rounds.append((name, grid))
        rows = [{**t, "config": ablate.config_key(t), "trial": ablate.trial_key(t), "error": "",
                 "metrics/fid_synth": 100.0 * t["seed"] + (50.0 if t["views"] == 1 else 0.0)
                 + ((-1) ** t["seed"] * (5 + t["seed"]) if t["camera_mode"] == "d_none" else 0.0)}
                for t in grid]  # fmt: skip
        return rows, [2.0] * len(grid)

    monkeypatch.setattr(ablate, "tune_round", tune_round)
    cfg = sweep_config("sweep=paper", "sweep.views=[4,1]", "sweep.grad_averaging=[true]", "sweep.background=[random]",
                       "sweep.camera_mode=[d_projection,d_none]", "sweep.metrics=[fid]", "sweep.seeds=auto",
                       "sweep.max_rounds=3")  # fmt: skip
    columns, tracker = ablate.compared_columns(cfg), Tracked()
    grid = ablate.trials(cfg.sweep)
    rows, differences, said = ablate.run_rounds(cfg, grid, [], {}, "out", 2, columns, tracker)
    assert [name for name, _ in rounds] == ["paper", "paper-round2", "paper-round3"]
    assert {ablate.config_key(t) for t in rounds[1][1]} == {"v4-avg1-d_projection-bgrandom", "v4-avg1-d_none-bgrandom"}
    assert {t["seed"] for t in rounds[2][1]} == {6, 7, 8} and len(rows) == 9 + 6 + 6
    found = {d.arm: d for d in differences}
    assert found["1"].verdict == Verdict.worse and found["1"].look == 1 and found["1"].pairs == 3
    assert found["d_none"].look == 3 and found["d_none"].pairs == 9 and found["d_none"].family == 1
    assert found["d_none"].level == pytest.approx(significance.look_level(3, 3))
    assert [step for step, _ in tracker.metrics] == [1, 2, 3] and tracker.metrics[0][1]["sweep/answered"] == 1
    assert "3 round(s)" in said and "round 1: level" in said
    # a budget that one more round would overrun stops the sweep before it
    rounds.clear()
    cfg.sweep.budget_minutes = 5.0
    rows, differences, said = ablate.run_rounds(cfg, grid, [], {}, "out", 2, columns, Tracked())
    assert len(rounds) == 1 and "would overrun sweep.budget_minutes=5" in said
