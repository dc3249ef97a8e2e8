"""The MLflow UI in headless Chromium (Debian's, installed by install_chromium.sh beside this file):
a page's rendered text and a screenshot of it. The UI is a single-page app that fetches after it
loads, hence Chromium's virtual-time budget.

Also a command that takes the screenshots shown in the README (docs/mlflow-*.png) from a
tracking server holding a finished sweep:

    python -m tests.integration.mlflow_ui http://127.0.0.1:5000 <sweep name> docs/
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from mlflow.tracking import MlflowClient

INSTALL = Path(__file__).with_name("install_chromium.sh")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000"]


def chromium() -> str:
    subprocess.run(["bash", str(INSTALL)], check=True, timeout=900)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium after install_chromium.sh"
    return found


def _flags(budget_ms: int, size: str) -> list[str]:
    return [*FLAGS[:-1], f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]


def dom(browser: str, url: str, budget_ms: int = 30000, size: str = "1600,1000") -> str:
    """The rendered page's HTML (chart cards render once they have had their time)."""
    return subprocess.run([browser, *_flags(budget_ms, size), "--dump-dom", url], capture_output=True, text=True,
                          timeout=240).stdout  # fmt: skip


def text(html: str) -> str:
    html = re.sub(r"<style[^>]*>.*?</style>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def page(browser: str, url: str, shot: Path, budget_ms: int = 30000, size: str = "1600,1000") -> str:
    """The rendered page's text (tags stripped); a screenshot of it at `shot`."""
    flags = _flags(budget_ms, size)
    html = dom(browser, url, budget_ms, size)
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=240)
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
    return text(html)


class SweepPages:
    """The URLs of a finished sweep's pages: its experiment's runs table (filtered), its chart
    view, a trial's run page (model metrics: the grid image chart), the parent's table artifact."""

    def __init__(self, tracking_uri: str, sweep: str, experiment: str = "cgsgan") -> None:
        self.base = tracking_uri.rstrip("/")
        self.client = MlflowClient(tracking_uri)
        self.experiment = self.client.get_experiment_by_name(experiment)
        exp_id = self.experiment.experiment_id
        self.parent = self.client.search_runs([exp_id], filter_string=f"tags.`cgsgan.sweep` = '{sweep}'")[0]
        self.children = self.client.search_runs([exp_id], filter_string=f"tags.sweep = '{sweep}'",
                                                order_by=["attributes.run_name ASC"])  # fmt: skip

    def runs(self, search: str, mode: str = "TABLE") -> str:
        return (f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs?compareRunsMode={mode}"
                f"&searchFilter={quote(search)}")  # fmt: skip

    def shared_view(self, sweep: str, mode: str = "TABLE") -> str:
        """The sweep's own view (sweeps/ablate.py shares it on the experiment: its trials, axis
        params and metrics as columns, grouped by the axes that vary)."""
        return (f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs?compareRunsMode={mode}"
                f"&viewStateShareKey=sweep-{sweep}")  # fmt: skip

    def run(self, run_id: str, tab: str = "model-metrics") -> str:
        return f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs/{run_id}/{tab}"

    def artifact(self, run_id: str, path: str) -> str:
        return f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs/{run_id}/artifacts/{path}"


def screenshots(tracking_uri: str, sweep: str, out: Path) -> list[Path]:
    browser = chromium()
    p = SweepPages(tracking_uri, sweep)
    shots = [
        (p.shared_view(sweep, "CHART"), out / "mlflow-chart-view.png", "1600,1400"),
        (p.artifact(p.parent.info.run_id, "comparison/trials.json"), out / "mlflow-sweep-table.png", "1600,900"),
        (p.shared_view(sweep), out / "mlflow-sweep-runs.png", "2000,700"),
    ]
    for url, shot, size in shots:
        page(browser, url, shot, budget_ms=60000, size=size)
    return [s for _, s, _ in shots]


if __name__ == "__main__":
    for path in screenshots(sys.argv[1], sys.argv[2], Path(sys.argv[3])):
        print(path)
