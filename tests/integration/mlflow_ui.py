"""The MLflow UI in headless Chromium (Debian's, installed by install_chromium.sh beside this file):
a page's rendered text and a screenshot of it. The UI is a single-page app that fetches after it
loads, hence Chromium's virtual-time budget.

A run page's chart cards mount only once an IntersectionObserver reports them in the viewport;
under a virtual-time budget headless Chromium draws no frames of its own, so that observer never
fires and every card stays a loading spinner (measured: 19 of 19 cards, even in a 3000 px tall
window with a 120 s budget) unless it runs every compositor stage before each draw (FRAMES),
and the window must be tall enough to hold every card (run_page_size).

Also a command that takes the screenshots shown in the README (docs/mlflow-*.png) from a
tracking server holding a finished sweep:

    python -m tests.integration.mlflow_ui http://127.0.0.1:5000 <sweep name> docs/
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass
from urllib.parse import quote, unquote

from mlflow.tracking import MlflowClient

INSTALL = Path(__file__).with_name("install_chromium.sh")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000"]
FRAMES = "--run-all-compositor-stages-before-draw"  # frames under virtual time: lazy chart cards mount
CARD_PITCH, CARD_COLUMNS, RUN_PAGE_TOP = 368, 3, 250  # the run page's chart grid: 360 px cards + 8 px gap, 3 a row


def chromium() -> str:
    subprocess.run(["bash", str(INSTALL)], check=True, timeout=900)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium after install_chromium.sh"
    return found


def _flags(budget_ms: int, size: str, frames: bool = False) -> list[str]:
    return [*FLAGS[:-1], f"--window-size={size}", f"--virtual-time-budget={budget_ms}", *([FRAMES] if frames else [])]


def dom(browser: str, url: str, budget_ms: int = 30000, size: str = "1600,1000", frames: bool = False) -> str:
    """The rendered page's HTML (chart cards render once they have had their time)."""
    return subprocess.run([browser, *_flags(budget_ms, size, frames), "--dump-dom", url], capture_output=True,
                          text=True, timeout=240).stdout  # fmt: skip


def text(html: str) -> str:
    html = re.sub(r"<style[^>]*>.*?</style>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def screenshot(browser: str, url: str, shot: Path, budget_ms: int, size: str, frames: bool = False) -> None:
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, *_flags(budget_ms, size, frames), f"--screenshot={shot}", url], capture_output=True,
                   timeout=240)  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {url}"


def page(browser: str, url: str, shot: Path, budget_ms: int = 30000, size: str = "1600,1000") -> str:
    """The rendered page's text (tags stripped); a screenshot of it at `shot`."""
    html = dom(browser, url, budget_ms, size)
    screenshot(browser, url, shot, budget_ms, size)
    return text(html)


@dataclass(frozen=True)
class ImageCard:
    """A step-image chart card of a run page as rendered: its key, the artifact its <img> shows,
    its step slider's range and its marks (one per logged step), its place among the cards."""

    key: str
    src: str
    first_step: int
    last_step: int
    marks: int
    index: int


def cards(html: str) -> list[str]:
    """The rendered chart cards' HTML, in page order."""
    return html.split('data-testid="experiment-view-compare-runs-card"')[1:]


def image_card(html: str, key: str) -> ImageCard | None:
    """The rendered image card titled `key` (None when the page holds none: still loading, say)."""
    for index, card in enumerate(cards(html)):
        if f'title="{key}">{key}</h4>' not in card:
            continue
        img = re.search(r'<img[^>]*src="([^"]+)"', card)
        slider = re.search(r'role="slider"[^>]*aria-valuemin="(-?\d+)" aria-valuemax="(-?\d+)"', card)
        if not img or not slider:
            return None
        marks = len(re.findall(r'<div[^>]*style="left: [\d.]+%;"></div>', card))
        return ImageCard(key, unquote(img.group(1).replace("&amp;", "&")), int(slider.group(1)), int(slider.group(2)),
                         marks, index)  # fmt: skip
    return None


def run_page_size(client: MlflowClient, run_id: str, width: int = 1600) -> str:
    """A window that holds every chart card of a run's model-metrics tab (its metrics but the
    system ones, and one card per step-image key), so that every card is in the viewport."""
    metrics = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    images = {a.path.split("/")[-1].split("+step+")[0] for a in client.list_artifacts(run_id, "images")}
    rows = math.ceil((len(metrics) + len(images)) / CARD_COLUMNS)
    return f"{width},{RUN_PAGE_TOP + rows * CARD_PITCH + 200}"


def run_page(browser: str, client: MlflowClient, url: str, run_id: str, shot: Path, budget_ms: int = 30000) -> str:
    """A run page's rendered HTML with every chart card mounted; a screenshot of it at `shot`."""
    size = run_page_size(client, run_id)
    html = dom(browser, url, budget_ms, size, frames=True)
    screenshot(browser, url, shot, budget_ms, size, frames=True)
    return html


def crop_to_card(shot: Path, card: ImageCard, out: Path, rows: int = 2) -> Path:
    """The screenshot's band of `rows` chart rows ending with the card's row (for the README)."""
    from PIL import Image

    row = card.index // CARD_COLUMNS
    with Image.open(shot) as im:
        top = RUN_PAGE_TOP + max(0, row - rows + 1) * CARD_PITCH - 10
        im.crop((200, top, 1190, RUN_PAGE_TOP + (row + 1) * CARD_PITCH - 8)).save(out, optimize=True)
    return out


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
    return [s for _, s, _ in shots] + [run_page_shot(browser, p, p.children[0].info.run_id, out)[0]]


def run_page_shot(browser: str, pages: SweepPages, run_id: str, out: Path) -> tuple[Path, ImageCard, str]:
    """A trial's run page (model metrics) cropped to its grid image card's rows at
    out/mlflow-run-page.png (the whole page beside it: mlflow-run-page-full.png); the card, the
    page's HTML. The card lists the run's params above its image: with a trial's full config
    (~60 params) they fill the 360 px card, so the screenshot shows the card's key, run, params
    and step slider while its <img> (in the HTML) lies below the card's fold."""
    full = out / "mlflow-run-page-full.png"
    html = run_page(browser, pages.client, pages.run(run_id), run_id, full, budget_ms=60000)
    card = image_card(html, "grid")
    assert card is not None, f"no rendered grid image card on {pages.run(run_id)} ({len(cards(html))} cards rendered)"
    return crop_to_card(full, card, out / "mlflow-run-page.png"), card, html


if __name__ == "__main__":
    for path in screenshots(sys.argv[1], sys.argv[2], Path(sys.argv[3])):
        print(path)
