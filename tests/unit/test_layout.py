"""Batch layouts: workers x chunks x batch_gpu performs the reference's update for that
layout, and no layout that would switch off minibatch-std or multi-view is accepted.

The golden loop below is written from the reference's order of operations (training_loop.py
and loss.py of fraunhoferhhi/cgs-gan), independently of the Trainer's: per phase and worker, each
chunk's mean loss back-propagated into the running gradient, which is clipped after every chunk
(G; D after the fakes and after the reals; R1); the workers' gradients averaged, NaN/Inf zeroed,
one Adam step; the w average moved per chunk; then the EMA. Workers are simulated one after the
other in one process; the Trainer runs them as real gloo ranks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from cgsgan import config, losses
from cgsgan.config import ConfigError
from cgsgan.layout import BatchLayout, LRScaling, check_batch, scaled_lr
from cgsgan.models import build_models
from cgsgan.render import render
from cgsgan.training.trainer import StepInputs, Trainer
from tests.unit.small import small_config
from tests.unit.ranks import run_ranks

STEPS = 3  # R1 runs in steps 0 and 2 (r1_interval 2)


# ---------------------------------------------------------------- point 1: refused layouts
def test_chunks_below_the_group_or_the_views_are_refused_naming_keys_and_valid_layouts(tmp_path):
    cfg = config.tiny()  # mbstd_group 4, 4 views, batch 8
    assert check_batch(cfg, 1) == BatchLayout(workers=1, chunks=1, batch_gpu=8)
    assert check_batch(cfg, 2) == BatchLayout(workers=2, chunks=1, batch_gpu=4)
    cfg.train.batch_gpu = 4
    assert check_batch(cfg, 1) == BatchLayout(workers=1, chunks=2, batch_gpu=4)
    ref = config.ffhq(512)  # the reference's command: batch 32 as 4 chunks of 8 on one GPU; 4 x 8 on four
    assert str(check_batch(ref, 1)) == "1 x (4 x 8)" and str(check_batch(ref, 4)) == "4 x (1 x 8)"

    for batch, workers, bg in ((2, 2, 0), (2, 1, 0), (8, 4, 0), (16, 1, 2), (8, 1, 6), (12, 1, 6)):
        cfg = config.tiny()
        cfg.train.batch_size, cfg.train.batch_gpu = batch, bg
        with pytest.raises(ConfigError) as e:
            check_batch(cfg, workers, workers_key="cluster.num_workers")
        msg = str(e.value)
        assert "\n" not in msg
        assert f"train.batch_size={batch}" in msg and f"cluster.num_workers={workers}" in msg, msg
        # Every layout the message offers is accepted.
        offered = [dict(kv.split("=") for kv in opt.split()) for opt in
                   msg.split("valid: ")[1].split(" (see")[0].split(" or ")]
        assert offered, msg
        for opt in offered:
            ok = config.tiny()
            ok.train.batch_size, ok.train.batch_gpu = int(opt["train.batch_size"]), int(opt["train.batch_gpu"])
            check_batch(ok, int(opt["cluster.num_workers"]))
    # The trainer refuses too: one head per worker never trains.
    cfg = small_config(tmp_path, batch_size=2)
    with pytest.raises(ConfigError, match="minibatch-std"):
        Trainer(cfg, tmp_path / "run", rank=0, world_size=2)


def test_launch_refuses_one_image_per_worker_before_ray(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for args in (["cluster.num_workers=2", "train.batch_size=2"], ["cluster.num_workers=1", "train.batch_size=2"]):
        p = subprocess.run([sys.executable, "orchestration/launch.py", *args, f"output_dir={tmp_path}"],
                           cwd=root, capture_output=True, text=True, timeout=300)
        out = p.stdout + p.stderr
        assert p.returncode == 2, out[-3000:]
        lines = [ln for ln in out.splitlines() if "train.batch_size=2" in ln]
        assert len(lines) == 1 and "minibatch-std" in lines[0] and "valid:" in lines[0], out[-3000:]
        assert "Started a local Ray" not in out, out[-3000:]


# ---------------------------------------------------------------- point 2: the reference's update per layout
def _f64(x: StepInputs) -> StepInputs:
    return StepInputs(**{k: v.double() for k, v in vars(x).items()})


def layout_config(data_dir, batch_gpu: int) -> config.CGSGANConfig:
    cfg = small_config(data_dir, batch_size=8)  # mbstd group 4, 2 views
    cfg.train.batch_gpu = batch_gpu
    cfg.train.snapshot_metrics = []
    cfg.train.render_backend = "torch"
    # train.num_threads stays 0: a Trainer in pytest's process would set torch's thread count for
    # every later test (the gloo ranks run on one thread each anyway).
    cfg.model.discriminator.num_fp16_res = 0  # float64 throughout
    # Clip thresholds the gradients exceed, so that where the clip happens matters.
    cfg.loss.g_clip, cfg.loss.d_clip = 0.05, 0.05
    return cfg


def _recording_trainer(cfg, run_dir, rank=0, world=1) -> tuple[Trainer, dict]:
    t = Trainer(cfg, run_dir, rank=rank, world_size=world)
    for m in (t.G, t.D, t.G_ema):
        m.double()
    rec = {"init": {n: copy.deepcopy(m.state_dict()) for n, m in (("G", t.G), ("D", t.D))}, "inputs": []}
    draw = t.draw_step
    t.draw_step = lambda: rec["inputs"].append(_f64(draw())) or rec["inputs"][-1]
    return t, rec


def _state(t_or_models) -> dict[str, torch.Tensor]:
    G, D, G_ema = t_or_models
    out = {}
    for name, m in (("G", G), ("D", D), ("G_ema", G_ema)):
        out.update({f"{name}.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    return out


def golden_run(cfg: config.CGSGANConfig, init: dict, inputs: list[list[StepInputs]], batch_gpu: int) -> dict:
    """The reference's training iterations on the recorded inputs (inputs[step][worker])."""
    lc, t, res = cfg.loss, cfg.train, cfg.model.resolution
    G, D = build_models(cfg.model)
    G.double().load_state_dict(init["G"])
    D.double().load_state_dict(init["D"])
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=t.g_lr, betas=(t.beta1, t.beta2), eps=1e-8)
    c = lc.r1_interval / (lc.r1_interval + 1)
    opt_D = torch.optim.Adam(D.parameters(), lr=t.d_lr * c, betas=(t.beta1**c, t.beta2**c), eps=1e-8)

    def phase(module, opt, chunks, chunk_losses):
        """Per worker: each chunk's losses back-propagated one after the other, the running
        gradient clipped after each; then the workers' mean, NaN/Inf zeroed, one step."""
        grads = []
        for worker_chunks in chunks:
            opt.zero_grad(set_to_none=True)
            for c in worker_chunks:
                for loss, max_norm in chunk_losses(c):
                    loss().backward()
                    torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm=max_norm)
            grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
        params = [p for p in module.parameters() if p.grad is not None]
        for i, p in enumerate(params):
            p.grad = torch.nan_to_num(sum(g[i] for g in grads) / len(grads), nan=0, posinf=1e5, neginf=-1e5)
        opt.step()

    cur_nimg = 0
    for step, workers in enumerate(inputs):
        blur_px = losses.blur_sigma(cur_nimg, lc, t.batch_size)
        chunks = [w.chunks(batch_gpu) for w in workers]

        def g_losses(c):  # Gmain: the chunk's heads rendered from V cameras, the chunk's labels rolled
            cams = losses.view_cameras(c.g_labels, lc.num_views)
            return [(lambda: losses.generator_loss(G, D, c.g_z, cams, c.g_backgrounds, lc, resolution=res, blur_px=blur_px,
                                                   backend="torch").total, lc.g_clip)]

        def fake_loss(c):
            with torch.no_grad():
                fakes = render(G(c.d_z, c.d_labels).gaussians, c.d_labels, res, c.d_backgrounds, backend="torch").image
            return losses.discriminator_fake_loss(D, fakes, c.d_labels, blur_px)[0]

        def d_losses(c):  # Dmain: fakes (clip), then reals (clip)
            return [(lambda: fake_loss(c), lc.d_clip),
                    (lambda: losses.discriminator_real_loss(D, c.reals, c.real_labels, blur_px)[0], lc.d_clip)]

        def r1_losses(c):  # Dreg
            return [(lambda: losses.r1_loss(D, c.reals, c.real_labels, lc, blur_px)[0], lc.d_clip)]

        G.requires_grad_(True)
        D.requires_grad_(False)
        phase(G, opt_G, chunks, g_losses)
        G.requires_grad_(False)
        D.requires_grad_(True)
        # w_avg moves per chunk, to the chunk's mean w (over the workers: they stay identical).
        for k in range(len(chunks[0])):
            with torch.no_grad():
                G.mapping.track_w_avg(torch.stack([G.map(wc[k].d_z, wc[k].d_labels).mean(0) for wc in chunks]).mean(0))
        phase(D, opt_D, chunks, d_losses)
        if step % lc.r1_interval == 0:
            phase(D, opt_D, chunks, r1_losses)
        D.requires_grad_(False)
        # G_ema (the reference's cur_nimg before the increment).
        ema_nimg = min(t.ema_kimg * 1000 * t.batch_size / 32, cur_nimg * t.ema_rampup)
        beta = 0.5 ** (t.batch_size / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        cur_nimg += t.batch_size
    return _state((G, D, G_ema))


def _two_rank_worker(rank: int, world: int, cfg_dict: dict, out: Path) -> None:
    cfg = config.from_dict(cfg_dict)
    t, rec = _recording_trainer(cfg, out / f"run{rank}", rank, world)
    for _ in range(STEPS):
        t.train_step()
    rec["inputs"] = [vars(x) for x in rec["inputs"]]  # plain tensors: torch.load stays weights-only
    torch.save({"state": _state((t.G, t.D, t.G_ema)), **rec}, out / f"rank{rank}.pt")


def _max_difference(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max((got[k] - want[k]).abs().max().item() for k in want if want[k].is_floating_point())


def test_every_layout_performs_the_reference_update(synthetic_dataset, tmp_path):
    results, worst = {}, 0.0
    for name, batch_gpu, layout in (("1x(2x4)", 4, "1 x (2 x 4)"), ("1x(1x8)", 8, "1 x (1 x 8)")):
        cfg = layout_config(synthetic_dataset, batch_gpu)
        t, rec = _recording_trainer(cfg, tmp_path / name)
        assert str(t.layout) == layout
        for _ in range(STEPS):
            t.train_step()
        got = _state((t.G, t.D, t.G_ema))
        want = golden_run(cfg, rec["init"], [[x] for x in rec["inputs"]], batch_gpu)
        worst = max(worst, diff := _max_difference(got, want))
        assert diff <= 1e-6, f"{name}: largest parameter difference {diff:.3g}"
        results[name] = got

    cfg = layout_config(synthetic_dataset, 4)
    run_ranks(_two_rank_worker, 2, config.to_dict(cfg), tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    inputs = [[StepInputs(**x) for x in s] for s in zip(ranks[0]["inputs"], ranks[1]["inputs"])]
    want = golden_run(cfg, ranks[0]["init"], inputs, 4)
    for r in ranks:
        worst = max(worst, diff := _max_difference(r["state"], want))
        assert diff <= 1e-6, f"2x(1x4): largest parameter difference {diff:.3g}"
    print(f"golden: largest parameter difference over the three layouts {worst:.3g}")

    # The layouts are different updates (same draws on one worker, other chunking): the
    # comparison above could not pass by accident.
    assert _max_difference(results["1x(2x4)"], results["1x(1x8)"]) > 1e-4
    assert results["1x(1x8)"]["G.mapping.w_avg"].abs().sum() > 0


def test_resume_on_another_layout_is_bit_identical_twice(synthetic_dataset, tmp_path):
    cfg = layout_config(synthetic_dataset, 0)
    cfg.loss.g_clip, cfg.loss.d_clip = 20.0, 5.0
    first = Trainer(cfg, tmp_path / "run")
    for _ in range(2):
        first.train_step()
    ckpt = first.save(first.checkpoint_path())
    cfg.train.batch_gpu = 4  # 1 x (1 x 8) -> 1 x (2 x 4)
    ends = []
    for _ in range(2):
        t = Trainer(cfg, tmp_path / "run")
        t.load(ckpt)
        t.train_step()
        ends.append(_state((t.G, t.D, t.G_ema)))
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


# ---------------------------------------------------------------- point 3: large-batch policy
def test_learning_rates_follow_the_named_policy(synthetic_dataset, tmp_path):
    assert scaled_lr(0.002, 32, LRScaling.none) == 0.002
    assert scaled_lr(0.002, 128, LRScaling.sqrt) == pytest.approx(0.004)
    assert scaled_lr(0.002, 256, LRScaling.linear) == pytest.approx(0.016)
    cfg = small_config(synthetic_dataset, batch_size=8)
    cfg.train.lr_scaling = LRScaling.linear
    t = Trainer(cfg, tmp_path)
    assert t.opt_G.param_groups[0]["lr"] == pytest.approx(cfg.train.g_lr * 8 / 32)
    c = cfg.loss.r1_interval / (cfg.loss.r1_interval + 1)
    assert t.opt_D.param_groups[0]["lr"] == pytest.approx(cfg.train.d_lr * 8 / 32 * c)


# ---------------------------------------------------------------- point 4: TF32 as the reference
def test_tf32_is_off_unless_asked_for(synthetic_dataset, tmp_path):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        cfg = small_config(synthetic_dataset)
        Trainer(cfg, tmp_path / "a")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        cfg.train.allow_tf32 = True
        Trainer(cfg, tmp_path / "b")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
