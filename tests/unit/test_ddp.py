"""Several workers with a real process group (torch.distributed, gloo on 127.0.0.1, one spawned
process per rank).

1. One step on 2 ranks with a per-rank batch b equals one step of one process with batch 2b, and
   over several steps every rank holds bit-identical models, optimiser states and buffers, while
   the ranks' data are disjoint and cover the epoch.
3. A checkpoint written by 2 workers resumes on 1, 2 and 4 (same run folder = same run name):
   the global sample order continues from the saved position, every rank's random stream is
   seeded from (seed, rank, step), and the same resume twice gives bit-identical weights.

Each test starts its own processes and stops only those (on failure or timeout).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

import cgsgan.training.trainer as trainer_module
from cgsgan import camera, config
from cgsgan.losses import view_cameras
from cgsgan.training.checkpoint import latest_checkpoint
from cgsgan.training.trainer import Trainer, stream_seed
from tests.unit.ranks import run_ranks
from tests.unit.small import small_config

GLOBAL_BATCH = 8
GROUP = 4  # the discriminator's minibatch-std group (DiscriminatorConfig.mbstd_group)


def ddp_config(data_dir, threads: int = 1) -> config.CGSGANConfig:
    cfg = small_config(data_dir, batch_size=GLOBAL_BATCH)  # R1 in steps 0, 2, ...
    cfg.train.snapshot_metrics = []
    cfg.train.num_threads = threads  # one per rank: 2 to 4 ranks share the machine's cores (0 in pytest's process)
    assert cfg.model.discriminator.mbstd_group == GROUP
    return cfg


def snapshot_state(t: Trainer) -> dict[str, torch.Tensor]:
    """Everything the ranks must agree on: G, D, G_ema (parameters and buffers, w_avg included)
    and both optimisers' states."""
    out = {}
    for name, model in (("G", t.G), ("D", t.D), ("G_ema", t.G_ema)):
        out.update({f"{name}.{k}": v.detach().clone() for k, v in model.state_dict().items()})
    for name, opt in (("opt_G", t.opt_G), ("opt_D", t.opt_D)):
        for i, st in opt.state_dict()["state"].items():
            out.update({f"{name}.{i}.{k}": torch.as_tensor(v).clone() for k, v in st.items()})
    return out


def assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


def global_order(parts: list[torch.Tensor]) -> list[int]:
    """The global batch from the ranks' parts: rank r holds samples r, r + W, ... of it."""
    W = len(parts)
    out = [0] * sum(len(p) for p in parts)
    for r, p in enumerate(parts):
        for j, v in enumerate(p.tolist()):
            out[r + W * j] = v
    return out


# ---------------------------------------------------------------- 1. one step: 2 x b == 1 x 2b
def _feed(t: Trainer, g: dict, rank: int, world: int) -> None:
    """Make t's next step draw its latents, cameras and backgrounds from one fixed global batch:
    rank r gets heads r, r + W, ... (the slice the data loader gives it of the reals)."""
    sl = slice(rank, None, world)
    labels, zs = [g["labels_G"][sl], g["labels_D"][sl]], [g["z_G"][sl], g["z_D"][sl]]
    bgs = [g["bg_G"][sl].reshape(-1, 3), g["bg_D"][sl]]  # the G step asks for b * V colours, head-major

    def take(queue, n):
        x = queue.pop(0)
        assert len(x) == n
        return x

    t._gen_labels = lambda n: take(labels, n)
    t._z = lambda n: take(zs, n)
    t._backgrounds = lambda n: take(bgs, n)
    # The G step's views roll the labels within the batch; give every head the cameras it has
    # in the whole batch (a roll within one rank's part would pair other labels).
    cams = view_cameras(g["labels_G"], g["V"])[sl]
    trainer_module.view_cameras = lambda lab, V: cams
    real_batch = t._real_batch
    seen = t.record = {}

    def reals():  # the trainer's own data path (sharding included), in float64
        x, lab = real_batch()
        seen["reals"] = x.clone()
        return x.double(), lab.double()

    t._real_batch = reals


def _float64(t: Trainer) -> Trainer:
    for m in (t.G, t.D, t.G_ema):
        m.double()  # parameters change dtype in place: the optimisers keep them
    return t


def _one_step_worker(rank: int, world: int, cfg_dict: dict, inputs: Path, out: Path) -> None:
    cfg = config.from_dict(cfg_dict)
    g = torch.load(inputs)
    t = _float64(Trainer(cfg, out / f"run{rank}", rank=rank, world_size=world))
    assert t.local_batch == GROUP
    _feed(t, g, rank, world)
    t.train_step()
    torch.save({"state": snapshot_state(t), "reals": t.record["reals"]}, out / f"rank{rank}.pt")
    if rank == 0:  # the same step in one process with the whole batch (no process group used)
        ref = _float64(Trainer(cfg, out / "ref", rank=0, world_size=1))
        init = snapshot_state(ref)
        _feed(ref, g, 0, 1)
        ref.train_step()
        torch.save({"state": snapshot_state(ref), "reals": ref.record["reals"], "init": init}, out / "ref.pt")


def test_two_ranks_step_equals_one_process_with_the_whole_batch(synthetic_dataset, tmp_path):
    # Same latents, cameras, backgrounds and reals (the reals through the trainer's own data
    # sharding). Conditions for exact equivalence (up to float64 rounding):
    #  - no gradient clipping: each rank clips its own gradient norm before the all-reduce (as the
    #    reference does per GPU), which 2 x b and 1 x 2b see differently; g_clip = d_clip = 0
    #    disables it;
    #  - per-rank batch b = the minibatch-std group (4): D's groups are strided (sample i of N is
    #    in group i mod N/4), so in one process with 2b = 8 the groups are samples {0,2,4,6} and
    #    {1,3,5,7}, exactly the two ranks' parts (rank r takes samples r, r + 2, ...); in the G
    #    step the 2b x V renders are head-major and grouped by view the same way;
    #  - float64 and no half-precision D blocks, so that "to float tolerance" is tight.
    # R1 runs in this step too (r1_interval = 1), and the w average is all-reduced.
    cfg = ddp_config(synthetic_dataset)
    cfg.loss.g_clip = cfg.loss.d_clip = 0.0
    cfg.loss.r1_interval = 1
    cfg.model.discriminator.num_fp16_res = 0
    V, zdim = cfg.loss.num_views, cfg.model.generator.z_dim
    gen = torch.Generator().manual_seed(13)
    f64 = torch.float64
    g = {"V": V,
         "labels_G": camera.sample_gaussian_poses(GLOBAL_BATCH, generator=gen, dtype=f64),
         "z_G": torch.randn(GLOBAL_BATCH, zdim, generator=gen, dtype=f64),
         "bg_G": torch.rand(GLOBAL_BATCH, V, 3, generator=gen, dtype=f64),
         "labels_D": camera.sample_gaussian_poses(GLOBAL_BATCH, generator=gen, dtype=f64),
         "z_D": torch.randn(GLOBAL_BATCH, zdim, generator=gen, dtype=f64),
         "bg_D": torch.rand(GLOBAL_BATCH, 3, generator=gen, dtype=f64)}  # fmt: skip
    torch.save(g, tmp_path / "inputs.pt")
    run_ranks(_one_step_worker, 2, config.to_dict(cfg), tmp_path / "inputs.pt", tmp_path)

    ref, r0, r1 = (torch.load(tmp_path / f"{n}.pt") for n in ("ref", "rank0", "rank1"))
    # The data loader gave each rank its strided part of the one-process batch.
    assert torch.equal(r0["reals"], ref["reals"][0::2]) and torch.equal(r1["reals"], ref["reals"][1::2])
    # Both ranks hold the same bits after the all-reduced step ...
    assert_identical(r0["state"], r1["state"], "rank 0 vs rank 1")
    # ... and the weights, buffers (w_avg) and optimiser moments of one process with batch 2b.
    moved = 0
    for k, want in ref["state"].items():
        got = r0["state"][k]
        if not want.is_floating_point():
            assert torch.equal(got, want), k
            continue
        # Seen here: every tensor within 3e-14 of its scale (float64 summation order); 1000x margin.
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11 * max(scale, 1.0), msg=lambda m: f"{k}: {m}")
        if k.split(".")[0] in ("G", "D") and not torch.equal(want, ref["init"][k]):
            moved += 1
    assert moved > 50  # the step did change the models
    assert ref["state"]["G.mapping.w_avg"].abs().sum() > 0


# ---------------------------------------------------------------- 1. several steps: ranks agree
def _several_steps_worker(rank: int, world: int, cfg_dict: dict, out: Path, steps: int) -> None:
    cfg = config.from_dict(cfg_dict)
    t = Trainer(cfg, out / f"run{rank}", rank=rank, world_size=world)
    points = t.G.points.detach().clone()
    drawn, zs = [], []
    next_indices, z = t.order.next, t._z
    t.order.next = lambda: drawn.append(next_indices()) or drawn[-1]
    t._z = lambda n: zs.append(z(n)) or zs[-1]
    for _ in range(steps):
        t.train_step()
    # This rank's part of every global batch of epoch 0, from the trainer's own sharding.
    n, epoch0 = len(t.dataset), []
    epoch, pos = 0, 0
    while epoch == 0:
        part, epoch, pos = t.order.indices_at(epoch, pos)
        epoch0.append(part)
    torch.save({"state": snapshot_state(t), "drawn": drawn, "z": zs, "epoch0": epoch0, "n": n, "points": points},
               out / f"rank{rank}.pt")


def test_ranks_stay_bit_identical_and_shards_cover_the_epoch(synthetic_dataset, tmp_path):
    # The training configuration as it is (per-rank clipping, half-precision D blocks, R1 every
    # 2 steps), each rank with its own random stream: after 4 steps every rank holds the same
    # bits in G, D, G_ema (w_avg included), both optimisers' states.
    cfg = ddp_config(synthetic_dataset)
    run_ranks(_several_steps_worker, 2, config.to_dict(cfg), tmp_path, 4)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert_identical(r0["state"], r1["state"], "rank 0 vs rank 1 after 4 steps")
    assert r0["state"]["G.mapping.w_avg"].abs().sum() > 0  # tracked from both ranks' latents
    assert not torch.equal(r0["state"]["G.points"], r0["points"])  # training happened
    # The ranks generate different heads (their own streams) from disjoint reals.
    assert all(not torch.equal(a, b) for a, b in zip(r0["z"], r1["z"]))
    for a, b in zip(r0["drawn"], r1["drawn"]):
        assert set(a.tolist()).isdisjoint(b.tolist())
    # Over epoch 0 the ranks' parts are disjoint and together hold every sample exactly once.
    n = r0["n"]
    assert n % GLOBAL_BATCH == 0 and len(r0["epoch0"]) == n // GLOBAL_BATCH
    s0, s1 = torch.cat(r0["epoch0"]).tolist(), torch.cat(r1["epoch0"]).tolist()
    assert len(s0) == len(s1) == n // 2
    assert sorted(s0 + s1) == list(range(n))
    # The steps trained on the start of that order.
    assert [torch.equal(a, b) for a, b in zip(r0["drawn"], r0["epoch0"])] == [True] * 4


# ---------------------------------------------------------------- 3. resume on another number of workers
RESUME_AT, MORE = 2, 2  # steps before the checkpoint, steps after it


def _first_run_worker(rank: int, world: int, cfg_dict: dict, run_dir: Path, out: Path) -> None:
    """2 workers: RESUME_AT steps, a checkpoint by rank 0, then MORE steps (the uninterrupted run)."""
    t = Trainer(config.from_dict(cfg_dict), run_dir, rank=rank, world_size=world)
    for _ in range(RESUME_AT):
        t.train_step()
    if rank == 0:
        t.save(t.checkpoint_path())
    dist.barrier()
    after = t.order.peek()
    for _ in range(MORE):
        t.train_step()
    torch.save({"state": snapshot_state(t), "next": after}, out / f"straight-rank{rank}.pt")


def _resume_worker(rank: int, world: int, cfg_dict: dict, run_dir: Path, out: Path, tag: str, times: int) -> None:
    """Resume the run's newest checkpoint on `world` workers and train MORE steps, `times` times
    over (fresh trainers in this process); save what each attempt ends with."""
    cfg = config.from_dict(cfg_dict)
    results = []
    for _ in range(times):
        t = Trainer(cfg, run_dir, rank=rank, world_size=world)
        newest = latest_checkpoint(run_dir / "checkpoints")
        assert newest is not None
        t.load(newest)
        assert t.step == RESUME_AT and t.cur_nimg == RESUME_AT * GLOBAL_BATCH
        # Documented stream: seeded from (seed, rank, step), whatever wrote the checkpoint.
        want = torch.Generator().manual_seed(stream_seed(cfg.train.seed, rank, RESUME_AT)).get_state()
        assert torch.equal(t.rng.get_state(), want)
        after = t.order.peek()
        peek = torch.Generator()
        peek.set_state(t.rng.get_state())
        z = torch.randn(t.local_batch, cfg.model.generator.z_dim, generator=peek)  # a draw of this rank's stream
        for _ in range(MORE):
            t.train_step()
        results.append({"state": snapshot_state(t), "next": after, "z": z})
    torch.save(results, out / f"{tag}-rank{rank}.pt")


def test_checkpoint_of_two_workers_resumes_on_one_two_and_four(synthetic_dataset, tmp_path):
    cfg = ddp_config(synthetic_dataset)
    cfg.model.discriminator.mbstd_group = 2  # 4 workers x 2 images: the smallest valid chunk is then 2
    d = config.to_dict(cfg)
    run_dir = tmp_path / "run"  # one run folder: what the same run name resolves to
    run_ranks(_first_run_worker, 2, d, run_dir, tmp_path)
    run_ranks(_resume_worker, 1, d, run_dir, tmp_path, "w1", 2)
    run_ranks(_resume_worker, 4, d, run_dir, tmp_path, "w4", 2)
    run_ranks(_resume_worker, 2, d, run_dir, tmp_path, "w2", 1)
    straight = [torch.load(tmp_path / f"straight-rank{r}.pt") for r in range(2)]
    w1 = torch.load(tmp_path / "w1-rank0.pt")
    w2 = [torch.load(tmp_path / f"w2-rank{r}.pt")[0] for r in range(2)]
    w4 = [torch.load(tmp_path / f"w4-rank{r}.pt") for r in range(4)]

    # Data: the first step after the resume trains on the same global batch whatever the
    # number of workers: the one the uninterrupted 2-worker run trained on.
    expected = global_order([s["next"] for s in straight])
    assert global_order([w1[0]["next"]]) == expected
    assert global_order([w["next"] for w in w2]) == expected
    assert global_order([w[0]["next"] for w in w4]) == expected
    assert len(set(expected)) == GLOBAL_BATCH

    # Determinism: the same resume twice gives the same bits; all ranks of a run agree.
    assert_identical(w1[0]["state"], w1[1]["state"], "2 -> 1, resumed twice")
    for r in range(4):
        assert_identical(w4[r][0]["state"], w4[r][1]["state"], f"2 -> 4, rank {r}, resumed twice")
        assert_identical(w4[r][0]["state"], w4[0][0]["state"], f"2 -> 4, rank {r} vs rank 0")
    # Resumed on as many workers as wrote it: exactly the uninterrupted run.
    assert_identical(w2[0]["state"], straight[0]["state"], "2 -> 2 vs uninterrupted")
    assert_identical(w2[1]["state"], straight[0]["state"], "2 -> 2 rank 1 vs uninterrupted")
    # Each rank has its own stream (different latents), and 1 or 4 workers do train on.
    assert len({tuple(w[0]["z"][0].tolist()) for w in w4}) == 4
    assert not torch.equal(w1[0]["state"]["G.points"], w4[0][0]["state"]["G.points"])


# ---------------------------------------------------------------- data order, no processes needed
def test_global_sample_order_is_the_same_for_any_number_of_workers(synthetic_dataset, tmp_path):
    # Across an epoch boundary that a global batch straddles (12 does not divide 512 items).
    cfg = ddp_config(synthetic_dataset, threads=0)
    cfg.train.batch_size = 12
    cfg.model.discriminator.mbstd_group = 3
    orders = {}
    for W in (1, 2, 4):
        ranks = [Trainer(cfg, tmp_path / f"w{W}-{r}", rank=r, world_size=W) for r in range(W)]
        n = len(ranks[0].dataset)
        seq, epoch, pos = [], 0, 0
        while len(seq) < 2 * n:
            parts = [t.order.indices_at(epoch, pos) for t in ranks]
            assert len({(e, p) for _, e, p in parts}) == 1  # every rank agrees on the next position
            seq += global_order([p for p, _, _ in parts])
            _, epoch, pos = parts[0]
        orders[W] = seq[: 2 * n]
    assert orders[1] == orders[2] == orders[4]
    perm0 = ranks[0].order.permutation(0).tolist()
    assert orders[1][:n] == perm0 and sorted(orders[1][n:]) == list(range(n))  # epoch 1: all once more


def test_checkpoint_of_the_per_shard_format_resumes_at_the_same_global_position(synthetic_dataset, tmp_path):
    # Checkpoints written before the global order hold rank 0's position in its shard of every
    # W-th sample: W times as many samples of the epoch were consumed.
    from cgsgan.training.checkpoint import load_checkpoint, save_checkpoint

    cfg = ddp_config(synthetic_dataset, threads=0)
    t = Trainer(cfg, tmp_path / "a")
    state = load_checkpoint(t.save(tmp_path / "new.pt"))
    state.pop("format")
    state["counters"]["epoch_pos"], state["world_size"] = 24, 2
    save_checkpoint(state, tmp_path / "same.pt")
    state.pop("data_order")
    save_checkpoint(state, tmp_path / "old.pt")
    t.load(tmp_path / "same.pt")
    assert t.order.pos == 24
    t.load(tmp_path / "old.pt")
    assert t.order.pos == 48
