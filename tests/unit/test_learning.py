"""The learning signal: a short run of the tiny config on the synthetic heads moves the snapshot
metric (fid_synth, from the cached synthetic-heads extractor) well below its value at kimg 0."""

import json

import pytest

from cgsgan import config
from cgsgan.training.trainer import Trainer


@pytest.mark.slow
def test_a_short_run_brings_fid_synth_well_below_its_start(tmp_path):
    cfg = config.tiny()
    cfg.data.synthetic_identities = 128  # a smaller dataset to make; same heads, same resolution
    cfg.train.total_kimg = 1.0
    cfg.train.tick_kimg = 0.5
    cfg.train.snapshot_ticks = 2
    cfg.train.checkpoint_ticks = 2
    cfg.train.snapshot_metrics = ["fid"]
    cfg.train.feature_extractor = "synthetic"
    cfg.train.metric_samples = 128
    Trainer(cfg, tmp_path).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fids = [(r["progress/kimg"], r["metrics/fid_synth"]) for r in records if "metrics/fid_synth" in r]
    (k0, start), (k1, end) = fids[0], fids[-1]
    assert k0 == 0.0 and k1 == pytest.approx(1.0, abs=0.01)
    assert end < 0.5 * start, fids  # an untrained generator is far off; 1 kimg at least halves it
    floor = next(r["metrics/fid_synth_floor"] for r in records if "metrics/fid_synth_floor" in r)
    assert end > floor  # and it is not yet a real head
