"""The MLflow UI in headless Chromium (Debian's, installed by install_chromium.sh beside this file):
a page's rendered text and a screenshot of it. The UI is a single-page app that fetches after it
loads, hence Chromium's virtual-time budget.

A run page's chart cards mount only once an IntersectionObserver reports them in the viewport;
under a virtual-time budget headless Chromium draws no frames of its own, so that observer never
fires and every card stays a loading spinner (measured: 19 of 19 cards, even in a 3000 px tall
window with a 120 s budget) unless it runs every compositor stage before each draw (FRAMES),
and the window must be tall enough to hold every card (run_page_size).

Every page is opened in the UI's model-training layout (orchestration.tracking.training_link).
The checks are on pixels where it matters: a run page's newest grid card is found in the
screenshot by correlating the logged picture, resized, with the card's crop (picture_match).

Also a command that takes the screenshots shown in docs/mlflow.md (docs/mlflow-*.png) from a
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

from orchestration.tracking import GRID_IMAGE_KEY, NEWEST_GRID_KEY, training_link

INSTALL = Path(__file__).with_name("install_chromium.sh")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000"]
FRAMES = "--run-all-compositor-stages-before-draw"  # frames under virtual time: lazy chart cards mount
CARD_PITCH, CARD_COLUMNS, RUN_PAGE_TOP = 368, 3, 250  # the run page's chart grid: 360 px cards + 8 px gap, 3 a row
CARD_LEFT, CARD_XPITCH, CARD_WIDTH = 212, 321, 314  # ... and its columns, in a 1600 px wide window
SECTION_HEADER = 'data-testid="experiment-view-compare-runs-section-header"'


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
    # 600 s: a 5,702 px tall run page took over 240 s on a 2-core AVX2-only CPU (2026-12-08).
    subprocess.run([browser, *_flags(budget_ms, size, frames), f"--screenshot={shot}", url], capture_output=True,
                   timeout=600)  # fmt: skip
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


def sections(html: str) -> list[str]:
    """The chart sections' names, in page order."""
    return [re.search(r">([^<]*)</div>", h).group(1) for h in html.split(SECTION_HEADER)[1:]]


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
    # image keys a/b make a section a above the metrics' (one per key's part before "/")
    rows = math.ceil(len(metrics) / CARD_COLUMNS) + math.ceil(len(images) / CARD_COLUMNS)
    return f"{width},{RUN_PAGE_TOP + rows * CARD_PITCH + 300}"  # + the section headers


def run_page(browser: str, client: MlflowClient, url: str, run_id: str, shot: Path, budget_ms: int = 30000) -> str:
    """A run page's rendered HTML with every chart card mounted; a screenshot of it at `shot`."""
    size = run_page_size(client, run_id)
    html = dom(browser, url, budget_ms, size, frames=True)
    screenshot(browser, url, shot, budget_ms, size, frames=True)
    return html


def crop_to_card(shot: Path, card: ImageCard, out: Path, rows: int = 2) -> Path:
    """The screenshot's band of `rows` chart rows from the card's row (for docs/): the first
    section's cards (the run's pictures) and the metrics' below."""
    from PIL import Image

    row = card.index // CARD_COLUMNS
    with Image.open(shot) as im:
        top = RUN_PAGE_TOP + row * CARD_PITCH - 60  # with the section's header
        im.crop((200, top, 1190, RUN_PAGE_TOP + (row + rows) * CARD_PITCH + 50)).save(out, optimize=True)
    return out


def card_crop(shot: Path, card: ImageCard):
    """The card's pixels in a run page's screenshot (a card of the first section: no header between)."""
    import numpy as np
    from PIL import Image

    row, col = divmod(card.index, CARD_COLUMNS)
    left, top = CARD_LEFT + col * CARD_XPITCH, RUN_PAGE_TOP + row * CARD_PITCH
    with Image.open(shot) as im:
        return np.asarray(im.convert("RGB").crop((left, top, left + CARD_WIDTH, top + CARD_PITCH - 8)))


def _gray(a):
    import numpy as np

    return np.asarray(a, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]) if np.ndim(a) == 3 else np.asarray(a, float)


def picture_match(crop, picture, visible: float = 0.5) -> float:
    """How well `picture` (a PIL image) appears in `crop` (the screenshot's pixels): the highest
    normalised cross-correlation of the picture's top `visible` part (the card may hide the rest
    behind its step slider), the picture resized to widths from a third of the crop's to all of
    it (aspect kept), at any place in the crop; both at half resolution. 1: the same pixels up to
    brightness and contrast; a blank or another picture scores far lower."""
    import numpy as np
    from PIL import Image

    image = _gray(Image.fromarray(crop).reduce(2))
    H, W = image.shape
    best = -1.0
    for w in range(W // 3, W + 1, 3):
        h = round(w * picture.height / picture.width * visible)
        if h > H or h < 4:
            break
        full = picture.convert("RGB").resize((w, round(h / visible)), Image.BILINEAR)
        t = _gray(full)[:h]
        if np.all(t == t.mean()):
            continue
        best = max(best, float(_ncc(image, t).max()))
    return best


def _ncc(image, template):
    """The normalised cross-correlation of a grey `template` [h, w] at every place it fits in a
    grey `image` [H, W]: [H - h + 1, W - w + 1]."""
    import numpy as np
    from scipy.signal import fftconvolve

    t = template - template.mean()
    h, w = t.shape
    ones = np.ones((h, w))
    num = fftconvolve(image, t[::-1, ::-1], mode="valid")
    s1, s2 = fftconvolve(image, ones, mode="valid"), fftconvolve(image**2, ones, mode="valid")
    return num / (np.sqrt(np.maximum(s2 - s1**2 / (h * w), 1e-9)) * np.sqrt((t**2).sum()))


def locate(shot: Path, picture, size: int = 256) -> tuple[float, int, int]:
    """Where `picture` (a PIL image) appears in the screenshot `shot` as an image card draws it:
    MLflow's thumbnail (the longer side `size` px, aspect kept) at its own size. Returns the best
    normalised cross-correlation and its top-left corner (y, x): 1 is the same pixels up to
    brightness and contrast."""
    import numpy as np
    from PIL import Image

    with Image.open(shot) as im:
        image = _gray(im.convert("RGB"))
    scale = size / max(picture.size)
    ncc = _ncc(image, _gray(picture.convert("RGB").resize((int(picture.width * scale), int(picture.height * scale)))))
    y, x = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    return float(ncc[y, x]), int(y), int(x)


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
        return training_link(f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs?compareRunsMode={mode}"
                             f"&searchFilter={quote(search)}")  # fmt: skip

    def shared_view(self, sweep: str, mode: str = "TABLE") -> str:
        """The sweep's own view (sweeps/ablate.py shares it on the experiment: its trials, axis
        params and metrics as columns, grouped by the axes that vary)."""
        return training_link(f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs?compareRunsMode={mode}"
                             f"&viewStateShareKey=sweep-{sweep}")  # fmt: skip

    def run(self, run_id: str, tab: str = "model-metrics") -> str:
        return training_link(f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs/{run_id}/{tab}")

    def artifact(self, run_id: str, path: str) -> str:
        return training_link(f"{self.base}/#/experiments/{self.experiment.experiment_id}/runs/{run_id}/artifacts/{path}")

    def grids(self, run_id: str, key: str = GRID_IMAGE_KEY) -> dict[int, str]:
        """A run's step images of `key`: step -> the last file logged at that step."""
        prefix = f"images/{key.replace('/', '~')}+step+"
        files = sorted(a.path for a in self.client.list_artifacts(run_id, "images")
                       if a.path.startswith(prefix) and a.path.endswith(".png"))  # fmt: skip
        return {int(p[len(prefix):].split("+")[0]): p for p in files}

    def picture(self, run_id: str, path: str, folder: Path):
        from PIL import Image

        with Image.open(self.client.download_artifacts(run_id, path, str(folder))) as im:
            return im.convert("RGB")


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
    """A trial's run page (model metrics) cropped to its first rows at out/mlflow-run-page.png
    (the whole page beside it: mlflow-run-page-full.png); the newest grid's card, the page's HTML.
    The card lists the run's few params above its picture (orchestration/run_params.py)."""
    full = out / "mlflow-run-page-full.png"
    html = run_page(browser, pages.client, pages.run(run_id), run_id, full, budget_ms=60000)
    card = image_card(html, NEWEST_GRID_KEY)
    assert card is not None, f"no rendered grid image card on {pages.run(run_id)} ({len(cards(html))} cards rendered)"
    return crop_to_card(full, card, out / "mlflow-run-page.png"), card, html


if __name__ == "__main__":
    for path in screenshots(sys.argv[1], sys.argv[2], Path(sys.argv[3])):
        print(path)
