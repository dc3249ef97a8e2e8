"""Shared fixtures (data only), and failures shown as they happen."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """Root of a small synthetic-heads dataset (64 identities x 4 views, 64x64, seed 0), made once per session."""
    from cgsgan.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "heads", identities=64, views=4, resolution=64, seed=0)


SLOW_S = 60  # a test phase at least this long is named with its time as it ends


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A failure's last lines, and each slow test's time, at once rather than only in the summary at
    the end: a CI run cut off by its time limit never prints that summary."""
    if report.failed:
        text = report.longreprtext.splitlines()[-40:]
        print(f"\n--- FAILED {report.nodeid} ({report.when}):\n" + "\n".join(text) + "\n---", flush=True)
    elif report.duration >= SLOW_S:
        print(f"\n--- {report.duration:.0f} s: {report.nodeid} ({report.when})", flush=True)
