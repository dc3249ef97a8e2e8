import hashlib
import subprocess
import sys
import textwrap

import pytest
import torch

from cgsgan import config
from cgsgan.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cgsgan.training.trainer import Trainer, TrainingDiverged
from tests.unit.small import small_config as shared_small_config


def small_config(data_dir, batch_size: int = 4) -> config.CGSGANConfig:
    cfg = shared_small_config(data_dir, batch_size=batch_size)
    cfg.train.total_kimg = 1.0
    cfg.train.tick_kimg = 1.0  # no tick inside these short runs
    return cfg


def params_digest(trainer: Trainer) -> str:
    h = hashlib.sha256()
    for model in (trainer.G, trainer.D, trainer.G_ema):
        for t in model.state_dict().values():
            h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_resume_in_fresh_process_is_bit_identical(synthetic_dataset, tmp_path):
    cfg = small_config(synthetic_dataset)
    straight = Trainer(cfg, tmp_path / "a")
    straight.run(max_steps=6)

    first = Trainer(cfg, tmp_path / "b")
    first.run(max_steps=3)
    ckpt = first.save(tmp_path / "b" / "half.pt")
    script = textwrap.dedent(
        f"""
        import hashlib, sys
        from cgsgan.config import from_dict
        from cgsgan.training.checkpoint import load_checkpoint
        from cgsgan.training.trainer import Trainer
        cfg = from_dict(load_checkpoint({str(ckpt)!r})["config"])
        t = Trainer(cfg, {str(tmp_path / "c")!r})
        t.load({str(ckpt)!r})
        t.run(max_steps=3)
        h = hashlib.sha256()
        for m in (t.G, t.D, t.G_ema):
            for v in m.state_dict().values():
                h.update(v.detach().contiguous().numpy().tobytes())
        print("DIGEST", h.hexdigest(), t.step, t.cur_nimg)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("DIGEST"))
    _, digest, step, nimg = line.split()
    assert (int(step), int(nimg)) == (6, 24)
    assert digest == params_digest(straight)
    # ... and the run did change the weights (the digest is not trivially equal).
    assert params_digest(first) != params_digest(straight)


def test_nan_loss_stops_at_the_tick_with_its_name_and_keeps_the_checkpoint(synthetic_dataset, tmp_path):
    # Losses stay on the device during a tick and are read once at its end: a non-finite one
    # stops training there, before anything is saved.
    cfg = small_config(synthetic_dataset)
    cfg.train.tick_kimg = 0.004  # one step of batch 4 per tick
    cfg.train.snapshot_ticks = cfg.train.checkpoint_ticks = 1
    cfg.train.snapshot_metrics = []
    t = Trainer(cfg, tmp_path)
    t.run(max_steps=1)
    good = latest_checkpoint(tmp_path / "checkpoints")
    assert good is not None
    before = good.read_bytes()
    with torch.no_grad():
        t.D.out.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss G\w* is nan in tick 2 \(up to step 2"):
        t.run(max_steps=1)
    assert latest_checkpoint(tmp_path / "checkpoints") == good
    assert good.read_bytes() == before


def test_r1_is_its_own_discriminator_step_on_the_reals(synthetic_dataset, tmp_path, monkeypatch):
    # The reference's lazy R1 ("Dreg") is a separate phase: its own backward of the R1 loss alone
    # (x interval), its own clip and its own optimiser step, every r1_interval steps, on the
    # real batch the main D step used.
    import cgsgan.training.trainer as trainer_module

    cfg = small_config(synthetic_dataset)
    cfg.loss.r1_interval = 2
    t = Trainer(cfg, tmp_path)
    seen = {}
    real_loss, r1 = trainer_module.discriminator_real_loss, trainer_module.r1_loss

    def record_real(D, reals, labels, blur_px):
        seen["reals"] = reals.clone()
        return real_loss(D, reals, labels, blur_px)

    def record_r1(D, reals, labels, cfg_, blur_px):
        seen["r1"] = (reals.clone(), labels.clone(), sum(int(p.grad is not None) for p in D.parameters()))
        return r1(D, reals, labels, cfg_, blur_px)

    monkeypatch.setattr(trainer_module, "discriminator_real_loss", record_real)
    monkeypatch.setattr(trainer_module, "r1_loss", record_r1)

    def d_steps():
        return int(t.opt_D.state[t.D.out.weight]["step"]) if t.D.out.weight in t.opt_D.state else 0

    t.train_step()  # step 0: main D step + R1 step
    assert d_steps() == 2
    r1_reals, r1_labels, grads_before = seen.pop("r1")
    assert torch.equal(r1_reals, seen["reals"])  # R1 differentiates the reals, not the fakes
    assert grads_before == 0  # the main step's gradients were cleared: R1 is back-propagated alone
    t.train_step()  # step 1: no R1
    assert d_steps() == 3 and "r1" not in seen
    t.train_step()  # step 2: R1 again
    assert d_steps() == 5 and "r1" in seen
    assert int(t.opt_G.state[t.G.points]["step"]) == 3


def test_w_avg_follows_the_discriminator_steps_latents(synthetic_dataset, tmp_path):
    # As in the reference (update_emas in the D phase), the w average moves once per step, from
    # the latents of the heads the D step generates.
    cfg = small_config(synthetic_dataset)
    t = Trainer(cfg, tmp_path)
    assert t.G.mapping.w_avg.abs().sum() == 0
    state = t.rng.get_state()
    t.train_step()
    after = t.G.mapping.w_avg.clone()
    assert after.abs().sum() > 0
    # Replay the step's random draws to find the D step's latents: G step (labels, z, backgrounds),
    # then D step (labels, z).
    rng = torch.Generator().set_state(state)
    n, V = t.local_batch, cfg.loss.num_views
    torch.randint(len(t.all_labels), (n,), generator=rng)
    torch.randn(n, cfg.model.generator.z_dim, generator=rng)
    torch.rand(n * V, 3, generator=rng)
    labels = t.all_labels[torch.randint(len(t.all_labels), (n,), generator=rng)]
    z = torch.randn(n, cfg.model.generator.z_dim, generator=rng)
    # w of those latents under the weights the D step used (G's, after its own update this step).
    w = t.G.map(z, labels).detach()
    torch.testing.assert_close(after, w.mean(0) * (1 - cfg.model.generator.w_avg_beta), atol=1e-6, rtol=1e-5)


def test_ranks_draw_disjoint_shards_of_each_epoch(synthetic_dataset, tmp_path):
    cfg = small_config(synthetic_dataset, batch_size=8)  # 4 per rank: a whole minibatch-std group
    a = Trainer(cfg, tmp_path / "r0", rank=0, world_size=2)
    b = Trainer(cfg, tmp_path / "r1", rank=1, world_size=2)
    n = len(a.dataset)
    seen_a = torch.cat([a.order.next() for _ in range(n // 2 // a.local_batch)])
    seen_b = torch.cat([b.order.next() for _ in range(n // 2 // b.local_batch)])
    assert set(seen_a.tolist()).isdisjoint(seen_b.tolist())
    assert len(set(seen_a.tolist())) == len(seen_a)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-1.pt"
    save_checkpoint({"x": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1.pt"]  # no temp file left
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_loading_a_checkpoint_of_another_model_shape_fails_clearly(synthetic_dataset, tmp_path):
    cfg = small_config(synthetic_dataset)
    t = Trainer(cfg, tmp_path)
    path = t.save(tmp_path / "x.pt")
    other = small_config(synthetic_dataset)
    other.model.generator.num_points = 48
    with pytest.raises(ValueError, match="another model shape"):
        Trainer(other, tmp_path / "o").load(path)


def test_tick_timing_excludes_housekeeping(synthetic_dataset, tmp_path):
    # A slow tick callback (a tracker, an upload) shows up as the next tick's maintenance time,
    # not as slower training: sec/kimg covers the training steps only.
    import time

    from cgsgan.training.trainer import Callbacks

    cfg = small_config(synthetic_dataset)
    cfg.train.tick_kimg = 0.004  # one step of batch 4 per tick
    cfg.train.snapshot_ticks = cfg.train.checkpoint_ticks = 1000
    ticks = []
    trainer = Trainer(cfg, tmp_path / "t", callbacks=Callbacks(on_tick=lambda s: (ticks.append(s), time.sleep(1.5))))
    trainer.run(max_steps=3)
    steps = [s["timing/sec_per_kimg"] * 0.004 for s in ticks]
    assert [round(s["timing/maintenance_sec"], 1) >= 1.5 for s in ticks] == [False, True, True]
    assert max(steps[1:]) < steps[0] + 1.0  # the 1.5 s sleeps are not in the step times


def test_batches_from_a_dataset_read_on_demand_match_the_cached_ones(synthetic_dataset, tmp_path, monkeypatch):
    # Too large for memory -> decoded per batch, the next batch prefetched in the background.
    import cgsgan.data.dataset as dataset_module

    cfg = small_config(synthetic_dataset)
    cached = Trainer(cfg, tmp_path / "a")
    monkeypatch.setattr(dataset_module, "CACHE_LIMIT_BYTES", 0)
    with pytest.warns(UserWarning, match="reading them on demand"):
        lazy = Trainer(cfg, tmp_path / "b")
    assert lazy.dataset.reads_on_demand and not cached.dataset.reads_on_demand
    for _ in range(3):
        (a, la), (b, lb) = cached._real_batch(), lazy._real_batch()
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert lazy.loader.reading_ahead  # the next batch is already on its way
    assert (lazy.order.epoch, lazy.order.pos) == (cached.order.epoch, cached.order.pos)


def test_snapshot_line_shows_each_distance_with_its_multiple_of_the_floor():
    from cgsgan.training.ticks import snapshot_line as _snapshot_line

    stats = {"progress/kimg": 4.0, "loss/G": 0.7, "metrics/fid_synth": 2375.4, "metrics/fid_synth_floor": 396.9,
             "metrics/fid_synth_ratio": 5.985, "metrics/fid3d_synth": 2400.0, "metrics/fid3d_synth_ratio": 6.047,
             "metrics/sensitivity": 0.0, "metrics/sensitivity/means": 0.0, "metrics/kid_synth": 0.0123,
             "metrics/kid_synth_std": 0.0021}  # fmt: skip
    assert _snapshot_line(stats) == ("snapshot kimg 4.00 | fid_synth 2375 (5.99x floor) | fid3d_synth 2400 (6.05x floor)"
                                     " | sensitivity 0 | kid_synth 0.0123 ± 0.0021")  # fmt: skip
    assert _snapshot_line({"progress/kimg": 1.0, "loss/G": 0.7}) is None  # no metrics: no line


@pytest.mark.parametrize("metrics_at", ["every_snapshot", "end"])
def test_metrics_at_end_computes_them_at_the_last_snapshot_only(synthetic_dataset, tmp_path, metrics_at):
    # A sweep compares the end of training: with train.metrics_at=end the metrics are computed once,
    # at the final snapshot, while every snapshot still saves its grid.
    import json

    cfg = small_config(synthetic_dataset)
    cfg.train.total_kimg, cfg.train.tick_kimg = 0.012, 0.004  # 3 ticks of one step
    cfg.train.snapshot_ticks, cfg.train.checkpoint_ticks = 1, 1000
    cfg.train.snapshot_metrics = ["sensitivity"]
    cfg.train.metrics_at = metrics_at
    Trainer(cfg, tmp_path / "t").run()
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    with_metrics = [line["progress/kimg"] for line in lines if "metrics/sensitivity" in line]
    assert with_metrics == ([0.0, 0.004, 0.008, 0.012] if metrics_at == "every_snapshot" else [0.012])
    assert len(list((tmp_path / "t" / "samples").glob("grid-*.png"))) == 4


def test_cudnn_picks_its_algorithms_and_the_snapshot_features_run_on_the_trainer_device(synthetic_dataset, tmp_path,
                                                                                       monkeypatch):
    # The reference sets cudnn.benchmark (fixed shapes: cuDNN times its algorithms once). The
    # snapshot metrics' feature network goes where the trainer is, not always onto the CPU.
    import cgsgan.training.snapshot_metrics as snapshot_metrics
    import cgsgan.training.trainer as trainer_module

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    cfg = small_config(synthetic_dataset)
    cfg.train.snapshot_metrics = ["fid_synth"]
    t = Trainer(cfg, tmp_path, device="cpu")
    assert torch.backends.cudnn.benchmark is True
    built = []

    class Recorded:
        def __init__(self, cfg, data_path, device=None):
            built.append(device)

        def __call__(self, G):
            return {}

    monkeypatch.setattr(snapshot_metrics, "SnapshotMetrics", Recorded)
    monkeypatch.setattr(trainer_module, "save_grid", lambda *args: tmp_path / "grid.png")  # not what is tested
    t.snapshot()
    assert built == [t.device]


def test_reals_cross_to_the_device_as_stored_and_are_the_items_bit_for_bit(synthetic_dataset, tmp_path):
    # uint8 to the device (a quarter of float32's bytes; pinned on CUDA), converted, flipped and
    # pasted onto their backgrounds there: the same values as the dataset's items.
    from torch.overrides import TorchFunctionMode

    cfg = small_config(synthetic_dataset)
    cfg.data.xflip, cfg.loss.background = True, "random"
    t = Trainer(cfg, tmp_path)
    moved = []

    class Moves(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to and ("device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])):
                moved.append((args[0].dtype, args[0].dim()))
            return func(*args, **kwargs)

    seen = []
    for _ in range(3):
        indices = t.order.peek()
        seen += indices.tolist()
        with Moves():
            reals, labels = t._real_batch()
        items = [t.dataset[int(i)] for i in indices]
        assert torch.equal(reals, torch.stack([it["image"] for it in items]))
        assert torch.equal(labels, torch.stack([it["label"] for it in items]))
    images = [dtype for dtype, dim in moved if dim == 4]
    assert images and set(images) == {torch.uint8}, moved
    assert any(i >= len(t.dataset) // 2 for i in seen) and any(i < len(t.dataset) // 2 for i in seen)  # both halves
