"""The documented MLflow model-URI commands (README.md and docs/), run as written after a run
with the default local tracking: in the folder it was launched from (as the repository root is
for the main job), then from another folder. A helper of the integration tests, not a test module."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ".venv/bin/python -m cgsgan.generate --checkpoint runs:/"
LOG = ".venv/bin/python -m orchestration.model_logging log"


def docs_text() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def documented_python(text: str) -> str:
    """The documented Python block that loads the generator by its run URI, as typed."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if 'mlflow.pyfunc.load_model("runs:/<run_id>/generator")' in b]
    assert found, "no documented mlflow.pyfunc.load_model block"
    return "\n".join(line.strip() for line in found[0].splitlines())  # it may sit in an indented list item


def documented_command(text: str, start: str) -> list[str]:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(start)), None)
    assert line, f"no documented command starting {start!r}"
    return shlex.split(line.split("  #")[0])


def check_model_uri_commands(home: Path, elsewhere: Path, env: dict, console: str) -> None:
    """`console`: what the run's last launch printed in `home` (its summary names the model and
    the command with its store). Every command exits 0 where the docs say, the bare command
    from `elsewhere` says in one line where it looked, and no folder gains an mlflow.db."""
    model = re.search(r"^  model: +runs:/(\w+)/generator", console, re.M)
    assert model, console[-3000:]
    run_id, run = model.group(1), re.search(r"^run (\S+)$", console, re.M).group(1)
    text = docs_text()

    def as_written(args: list[str]) -> list[str]:
        args = [a.replace("<run_id>", run_id).replace("<run>", run) for a in args]
        return [sys.executable, *args[1:]] if args[0].endswith("python") else args

    def run_in(cwd: Path, args: list[str] | str, shell: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=300)

    python = documented_python(text).replace("<run_id>", run_id)
    loaded = run_in(home, [sys.executable, "-c", python + "\nprint(images.shape)"])
    assert loaded.returncode == 0 and "(2, 64, 64, 3)" in loaded.stdout, loaded.stderr[-3000:]
    for start in (GENERATE, LOG):
        done = run_in(home, as_written(documented_command(text, start)))
        assert done.returncode == 0, (start, done.stderr[-3000:])
    assert (home / "samples" / "grid.png").exists()

    printed = re.search(r"^  from model: +(.+)$", console, re.M).group(1)
    assert printed.startswith("MLFLOW_TRACKING_URI=sqlite:///") and f"--checkpoint runs:/{run_id}/generator" in printed
    elsewhere.mkdir(exist_ok=True)
    done = run_in(elsewhere, printed.replace(" python ", f" {sys.executable} ", 1), shell=True)
    assert done.returncode == 0 and (elsewhere / "samples" / "grid.png").exists(), done.stderr[-3000:]
    bare = run_in(elsewhere, as_written(documented_command(text, GENERATE)))
    errors = [ln for ln in bare.stderr.splitlines() if ln.startswith("error:")]
    assert bare.returncode == 2 and len(errors) == 1, bare.stderr[-3000:]
    assert "no MLflow store here" in errors[0] and "MLFLOW_TRACKING_URI=" in errors[0]
    assert not list(elsewhere.glob("mlflow.db")) and not (home / "mlflow.db").exists()
