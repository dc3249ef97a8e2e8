"""Stand-ins for what a CPU machine lacks, shared by the unit tests."""

from __future__ import annotations

import sys
import types


def gsplat_without_kernels(monkeypatch) -> None:
    """gsplat as its PyPI wheel installs on a machine without nvcc: importable, `_C` None."""
    from cgsgan.render import backends

    package, cuda, backend = (types.ModuleType(n) for n in ("gsplat", "gsplat.cuda", "gsplat.cuda._backend"))
    backend._C = None
    package.cuda, cuda._backend = cuda, backend
    for module in (package, cuda, backend):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    if hasattr(backends, "gsplat_kernels"):  # looked up once per process: here, afresh
        monkeypatch.setattr(backends, "gsplat_kernels", backends.gsplat_kernels.__wrapped__)
