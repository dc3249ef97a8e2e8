"""Tests stop only what they started: on a shared machine `ray stop --force`,
`pkill`/`killall`, a victim picked with `pgrep`, or `scancel --user` hit other people's jobs. The
test code and the local infra it drives must not run any of them; they stop processes by the id
they started, or by their own Ray temp dir / state folder (tests/integration/procs.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = sorted((ROOT / "tests").rglob("*.py")) + [ROOT / "infra/slurm/local_cluster.py", ROOT / "infra/local/stack.py"]
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "system"}


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def forbidden_commands(path: Path) -> list[str]:
    """Process-runner calls in `path` that stop processes by name or by user."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in RUNNERS):
            continue
        if not node.args:
            continue
        args = node.args[0]
        words = _strings(args)
        if isinstance(args, ast.Constant) and isinstance(args.value, str):
            words = args.value.split()
        program = Path(words[0]).name if words else ""
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if "stop" in words and any(w == "ray" or w.endswith("/ray") for w in words):
            found.append(f"{where}: ray stop")
        if program in ("pkill", "killall"):
            found.append(f"{where}: {program}")
        if program == "pgrep" and path.is_relative_to(ROOT / "tests"):
            found.append(f"{where}: pgrep (a victim found by name)")
        if program == "scancel" and any(w.startswith(("--user", "-u")) for w in words):
            found.append(f"{where}: scancel --user")
    return found


def test_no_test_stops_processes_by_name_or_by_user():
    offenders = [f for path in SCANNED for f in forbidden_commands(path)]
    assert offenders == [], "\n".join(offenders)


def test_the_check_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import subprocess, sys\nfrom pathlib import Path\n"
        "subprocess.run([str(Path(sys.executable).with_name('ray')), 'stop', '--force'])\n"
        "subprocess.run(['pkill', '-x', 'slurmd'])\nsubprocess.run(['scancel', '--user=root'])\n"
        "subprocess.run('killall raylet', shell=True)\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = forbidden_commands(bad)
    finally:
        ROOT = saved
    assert [f.split(": ", 1)[1] for f in found] == ["ray stop", "pkill", "scancel --user", "killall"]
