"""A one-paragraph description of the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import torch


def describe() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    # The CPU's vector width and bf16 kernels decide the step time (the discriminator runs its
    # half-precision blocks in bf16 only where there are bf16 kernels).
    from cgsgan.discriminator import cpu_has_bf16_kernels

    isa = f"{torch.backends.cpu.get_cpu_capability()}, {'with' if cpu_has_bf16_kernels() else 'no'} bf16 kernels"
    return (
        f"Machine: {os.cpu_count()} cores ({cpu}; {isa}){mem}, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
        f"measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."
    )
