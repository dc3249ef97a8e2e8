"""The sweep's report (sweeps/report.py): the per-configuration summary over seeds, and the paired
differences of each arm to its axis's reference arm with bootstrap intervals and verdicts."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import bootstrap

from cgsgan.config import ConfigError
from cgsgan.metrics.evaluation import Better, compared_metrics
from sweeps import ablate, report
from sweeps.report import MIN_PAIRS, Verdict, reported

# The registry's columns for the metrics these rows carry; the first (fid_synth) is the headline.
COLUMNS = compared_metrics("synth", ["fid", "fid3d", "sensitivity", "psnr_cond"])
METRIC = reported(COLUMNS[0])

AXES = {"views": [4], "grad_averaging": [True], "camera_mode": ["d_projection", "d_none", "g_conditioned"],
        "background": ["random"]}  # fmt: skip


def row(seed: int, camera_mode: str = "d_projection", views: int = 4, error: str = "", **metrics) -> dict:
    axes = {"views": views, "grad_averaging": True, "camera_mode": camera_mode, "background": "random", "seed": seed}
    base = {"metrics/fid3d_synth": 30.0 + seed, "metrics/fid_synth_floor": 5.0, "metrics/sensitivity": 0.0,
            "metrics/psnr_cond": 100.0, "loss/G": 1.0, "loss/D": 1.0}  # fmt: skip
    return {**axes, "config": ablate.config_key(axes), "trial": ablate.trial_key(axes), "kimg": 3.0, **base,
            **metrics, "error": error}  # fmt: skip


def test_report_writes_table_and_plot(tmp_path):
    rows = [row(s, cm, v, **{METRIC: 10.0 + v + s}) for v in (1, 4) for cm in ("d_projection", "g_conditioned")
            for s in (0, 1)]  # fmt: skip
    csv_path, md_path, png_path = report.write_report(rows, {**AXES, "views": [1, 4], "camera_mode": [
        "d_projection", "g_conditioned"]}, tmp_path, COLUMNS)  # fmt: skip
    assert csv_path.read_text().count("\n") == 9
    table = md_path.read_text()
    assert "| v4-avg1-g_conditioned-bgrandom-s1 |" in table
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_compares_configurations_by_mean_and_spread_over_seeds(tmp_path):
    rows = [row(s, views=v, **{METRIC: 10.0 + v + 2 * s}) for v in (1, 4) for s in (0, 1, 2)]
    rows[-1] = {**rows[-1], "error": "RuntimeError: boom", METRIC: None}  # v4 seed 2 failed
    summary = {e["config"]: e for e in report.summarize(rows, COLUMNS)}
    v1, v4 = summary["v1-avg1-d_projection-bgrandom"], summary["v4-avg1-d_projection-bgrandom"]
    assert (v1["seeds"], v1["failed"], v4["seeds"], v4["failed"]) == (3, 0, 2, 1)
    mean, spread, values = v1[METRIC]
    assert values == [11.0, 13.0, 15.0] and mean == pytest.approx(13.0) and spread == pytest.approx(2.0)
    assert v4["metrics/fid3d_synth"][:2] == (pytest.approx(30.5), pytest.approx(0.5 ** 0.5))
    assert v1["metrics/psnr_cond"][:2] == (100.0, 0.0)
    table = report.write_report(rows, {**AXES, "views": [1, 4], "camera_mode": ["d_projection"]}, tmp_path,
                                COLUMNS)[1].read_text()  # fmt: skip
    assert ("| configuration | seeds | FID | FID3D (frontal-conditioned) | camera sensitivity | psnr_cond (dB) |"
            in table)  # fmt: skip
    assert "| v1-avg1-d_projection-bgrandom | 3 | 13 ± 2 | 31 ± 1 | 0 ± 0 | 100 ± 0 |" in table
    assert "| v4-avg1-d_projection-bgrandom | 2 (1 failed) | 15 ± 1.414 |" in table
    one = report.write_report(rows[:1], AXES, tmp_path / "one", COLUMNS)[1].read_text()
    assert "| v1-avg1-d_projection-bgrandom | 1 | 11 | 30 | 0 | 100 |" in one  # no spread from one seed
    assert "metrics/fid_synth_floor" in one.splitlines()[-3]  # each trial's floor beside its metrics


def test_the_sweep_compares_the_registry_columns_it_asks_its_trials_for():
    cfg = ablate_defaults()
    columns = ablate.compared_columns(cfg)
    assert columns == compared_metrics("synth", cfg.sweep.metrics)  # the registry's, in its order
    assert {c.key: c.better for c in columns} == {
        "fid_synth": Better.lower, "fid3d_synth": Better.lower, "fid_synth_novel": Better.lower,
        "fid_synth_bg": Better.lower, "geometry": Better.higher, "sensitivity": Better.lower,
        "psnr_cond": Better.higher}  # fmt: skip
    trial = ablate.trial_config(cfg, ablate.trials(cfg.sweep)[0])
    assert {c.request for c in columns} <= set(trial.train.snapshot_metrics)  # what is compared is computed
    assert trial.train.metric_samples >= 1024 and trial.train.metrics_at == "end"
    # another feature network names the columns after it
    assert [c.key for c in ablate.compared_columns(ablate_defaults("train.feature_extractor=random"))][:2] == [
        "fid_rand", "fid3d_rand"]
    with pytest.raises(ConfigError, match=r"sweep.metrics=\['fid', 'bogus'\]: unknown metrics"):
        ablate.compared_columns(ablate_defaults("sweep.metrics=[fid,bogus]"))
    with pytest.raises(ConfigError, match=r"sweep.metrics=.*fid_novel.*ground truth"):
        ablate.compared_columns(ablate_defaults("data=custom", "data.path=/nonexistent"))
    with pytest.raises(ConfigError, match="none of them has a compared column"):
        ablate.compared_columns(ablate_defaults("sweep.metrics=[depth_consistency]"))


def ablate_defaults(*overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(ablate.__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return OmegaConf.to_object(compose("ablate", overrides=list(overrides)))


def paired_rows(seeds: int) -> list[dict]:
    """Seeds move fid_synth a lot (10 per seed); d_none is worse by 5 +- 0.3 in every pair and has
    the better psnr_cond; g_conditioned differs from d_projection by noise of either sign."""
    noise = np.random.default_rng(1).normal(0, 0.3, size=(seeds, 2))
    out = []
    for s in range(seeds):
        out.append(row(s, "d_projection", **{METRIC: 10.0 * s, "metrics/psnr_cond": 30.0}))
        out.append(row(s, "d_none", **{METRIC: 10.0 * s + 5 + noise[s, 0], "metrics/psnr_cond": 100.0}))
        out.append(row(s, "g_conditioned", **{METRIC: 10.0 * s + (1 if s % 2 else -1) + noise[s, 1],
                                              "metrics/psnr_cond": 30.0}))
    return out


def test_arms_are_compared_to_the_reference_paired_over_seeds():
    rows = paired_rows(5)
    found = {(d.arm, reported(d.metric)): d for d in report.paired_differences(rows, AXES, COLUMNS)}
    assert {arm for arm, _ in found} == {"d_none", "g_conditioned"}  # the reference arm is the first listed
    worse = found[("d_none", METRIC)]
    assert (worse.axis, worse.reference, worse.pairs, worse.verdict) == ("camera_mode", "d_projection", 5, Verdict.worse)
    assert 0 < worse.low < worse.mean < worse.high  # the seeds' spread of 10 per seed cancels in the pairs
    # the interval is scipy's paired bootstrap of the mean difference
    arm = [r[METRIC] for r in rows if r["camera_mode"] == "d_none"]
    ref = [r[METRIC] for r in rows if r["camera_mode"] == "d_projection"]
    res = bootstrap((arm, ref), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                    method="percentile", rng=np.random.default_rng(0))  # fmt: skip
    assert (worse.low, worse.high) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high))
    assert worse.values == pytest.approx([a - r for a, r in zip(arm, ref)])  # each pair's arm - reference
    assert found[("d_none", "metrics/psnr_cond")].verdict == Verdict.better  # higher is better there
    assert found[("g_conditioned", METRIC)].verdict == Verdict.not_separated
    assert found[("g_conditioned", "metrics/psnr_cond")].verdict == Verdict.not_separated  # no difference at all
    assert found[("g_conditioned", "metrics/psnr_cond")].low == 0.0


def test_fewer_than_three_pairs_give_no_interval_and_no_verdict(tmp_path):
    rows = paired_rows(MIN_PAIRS)
    rows[0] = {**rows[0], "error": "RuntimeError: boom", METRIC: None}  # the reference of seed 0 failed
    found = {(d.arm, reported(d.metric)): d for d in report.paired_differences(rows, AXES, COLUMNS)}
    d = found[("d_none", METRIC)]
    assert (d.pairs, d.low, d.high, d.verdict) == (MIN_PAIRS - 1, None, None, Verdict.too_few_seeds)
    assert d.mean == pytest.approx(np.mean([r[METRIC] - q[METRIC] for r, q in zip(rows[4::3], rows[3::3])]))
    table = report.write_report(rows, AXES, tmp_path, COLUMNS)[1].read_text()
    assert f"| camera_mode | d_none | d_projection | FID | lower | {MIN_PAIRS - 1} |" in table
    assert "too few seeds" in table and "[" not in table.split("| camera_mode | d_none | d_projection | FID |")[1].split("\n")[0]


def test_every_trial_carries_its_verdict_in_the_csv(tmp_path):
    rows = paired_rows(4)
    csv_path = report.write_report(rows, AXES, tmp_path, COLUMNS)[0]
    verdicts = {r["trial"]: r["verdict"] for r in csv.DictReader(csv_path.open())}
    assert verdicts["v4-avg1-d_projection-bgrandom-s0"] == "reference"
    assert verdicts["v4-avg1-d_none-bgrandom-s2"] == "camera_mode=d_none: worse"
    assert verdicts["v4-avg1-g_conditioned-bgrandom-s3"] == "camera_mode=g_conditioned: not separated"


def test_three_pairs_of_one_sign_inside_the_noise_are_not_a_result(tmp_path):
    """With 3 pairs the percentile bootstrap spans the smallest to the largest difference, so three
    differences of one sign (1 time in 4 from noise alone) would be a verdict; the verdict also needs
    the paired t interval, which accounts for the few pairs."""
    def rows_with(diffs):
        out = []
        for s, d in enumerate(diffs):
            out.append(row(s, "d_projection", **{METRIC: 10.0 * (s + 1)}))
            out.append(row(s, "d_none", **{METRIC: 10.0 * (s + 1) + d}))
        return out

    axes = {**AXES, "camera_mode": ["d_projection", "d_none"]}
    noisy = next(d for d in report.paired_differences(rows_with([1.0, 8.0, 15.0]), axes, COLUMNS)
                 if reported(d.metric) == METRIC)  # fmt: skip
    assert noisy.low > 0  # the bootstrap alone would call it worse
    assert noisy.t_low < 0 < noisy.t_high and noisy.verdict == Verdict.not_separated
    steady = next(d for d in report.paired_differences(rows_with([5.0, 5.2, 4.9]), axes, COLUMNS)
                  if reported(d.metric) == METRIC)  # fmt: skip
    assert 0 < steady.t_low and 0 < steady.low and steady.verdict == Verdict.worse
    from scipy.stats import ttest_rel

    ci = ttest_rel([15.0, 25.2, 34.9], [10.0, 20.0, 30.0]).confidence_interval(0.95)
    assert (steady.t_low, steady.t_high) == pytest.approx((ci.low, ci.high))
    table = report.write_report(rows_with([1.0, 8.0, 15.0]), axes, tmp_path, COLUMNS)[1].read_text()
    assert "| bootstrap interval | t interval | p (Holm) | verdict |" in table
