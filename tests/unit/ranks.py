"""Ranks of a test in spawned processes joined in one gloo group on 127.0.0.1 (the DDP and layout
tests'). The function a rank runs must be importable (spawn pickles it by name)."""

from __future__ import annotations

import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from infra.local.stack import free_port


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout: float = 600) -> None:
    """fn(rank, world, *args) in `world` spawned processes joined in one gloo group; a failing
    rank fails the test (torch stops the other ranks it started), so does the timeout."""
    ctx = mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:  # only the processes this call started
                if p.is_alive():
                    p.terminate()
            for p in ctx.processes:
                p.join(10)
            pytest.fail(f"{world} ranks did not finish in {timeout} s")
