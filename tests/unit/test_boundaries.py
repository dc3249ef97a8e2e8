"""Static checks of the import graph (the import statements, top-level and inside functions):

- the model core (cgsgan/) never imports the orchestration stack (Ray, MLflow, boto3, Hydra,
  OmegaConf, submitit) nor the project's orchestration/sweeps code;
- orchestration/ and sweeps/ import each other without a cycle, and nothing imports the entry
  point orchestration/launch.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION_STACK = {"ray", "mlflow", "boto3", "botocore", "hydra", "omegaconf", "submitit"}
PROJECT_OUTSIDE_CORE = {"orchestration", "sweeps", "infra", "benchmarks", "tests"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an import statement in `path` names (absolute; relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "cgsgan"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    import ray.train\n    from hydra import compose\n"
                              "from . import y\nfrom .y import z\n")  # fmt: skip
    assert {"ray.train", "hydra", "cgsgan.y", "cgsgan.y.z"} <= imports(pkg / "x.py", tmp_path)


@pytest.mark.parametrize("path", python_files("cgsgan"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_model_core_imports_no_orchestration(path):
    tops = {name.split(".")[0] for name in imports(path)}
    assert not tops & ORCHESTRATION_STACK, f"{path.relative_to(ROOT)} imports {sorted(tops & ORCHESTRATION_STACK)}"
    assert not tops & PROJECT_OUTSIDE_CORE, f"{path.relative_to(ROOT)} imports {sorted(tops & PROJECT_OUTSIDE_CORE)}"


def project_graph() -> dict[str, set[str]]:
    files = python_files("orchestration", "sweeps")
    names = {module_name(p) for p in files}
    return {module_name(p): {n for n in imports(p) if n in names and n != module_name(p)} for p in files}


def test_orchestration_and_sweeps_import_each_other_without_a_cycle():
    graph = project_graph()
    assert "orchestration.cluster" in graph and "orchestration.slurm" in graph["orchestration.cluster"]
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_nothing_imports_the_launch_entry_point():
    importers = [m for m, deps in project_graph().items() if "orchestration.launch" in deps]
    importers += [str(p.relative_to(ROOT)) for p in python_files("cgsgan", "tests", "infra", "benchmarks")
                  if "orchestration.launch" in imports(p)]  # fmt: skip
    assert importers == []
    # and the entry point only composes the config and hands it on
    assert {n for n in imports(ROOT / "orchestration" / "launch.py") if n.startswith("orchestration")} == {
        "orchestration", "orchestration.cluster", "orchestration.config", "orchestration.config.register",
        "orchestration.config.to_typed"}  # fmt: skip


def test_slurm_and_sweeps_reach_ray_through_cluster():
    graph = project_graph()
    assert "orchestration.cluster" in graph["sweeps.ablate"]
    assert "orchestration.ray_nodes" in graph["orchestration.slurm"]
