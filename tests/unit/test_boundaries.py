"""Static checks of the import graph (the import statements, top-level and inside functions):

- the model core (cgsgan/) never imports the orchestration stack (Ray, MLflow, boto3, Hydra,
  OmegaConf, submitit) nor the project's orchestration/sweeps code;
- no package of the project (cgsgan/, orchestration/, sweeps/, infra/, benchmarks/, tests/) has an
  import cycle, within it or across packages, and nothing imports the entry point
  orchestration/launch.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION_STACK = {"ray", "mlflow", "boto3", "botocore", "hydra", "omegaconf", "submitit"}
PROJECT_OUTSIDE_CORE = {"orchestration", "sweeps", "infra", "benchmarks", "tests"}
PACKAGES = ("cgsgan", *sorted(PROJECT_OUTSIDE_CORE))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_statements(path: Path, root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """(module, names) for each import statement in `path`, functions included: `import a.b` gives
    ("a.b", []), `from a import b, c` ("a", ["b", "c"]); relative modules resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.append((base, [a.name for a in node.names]))
    return found


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an import statement in `path` names (absolute; relative ones resolved)."""
    found = set()
    for base, names in import_statements(path, root):
        found |= {base, *(f"{base}.{n}" for n in names)}  # `from pkg import module`
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


def module_imports(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The project modules `path` imports: `from pkg import mod` names the module pkg.mod, not the
    package pkg (whose __init__ Python runs for any of its modules, so it is no edge of its own)."""
    found = set()
    for base, names in import_statements(path, root):
        subs = {f"{base}.{n}" for n in names}
        found |= subs & modules
        if not subs or not subs <= modules:  # `import base`, or a name defined in base itself
            found.add(base)
    return {n for n in found if n in modules and n != module_name(path, root)}


def project_graph(*folders: str) -> dict[str, set[str]]:
    """module -> the project modules it imports, over `folders` (default: every package)."""
    files = python_files(*(folders or PACKAGES))
    names = {module_name(p) for p in files}
    return {module_name(p): module_imports(p, names) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "cgsgan"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "factory.py").write_text("def make():\n    from cgsgan import net\n")
    (pkg / "net.py").write_text("from cgsgan.factory import helper\n")
    (pkg / "other.py").write_text("from cgsgan import net\n")
    files = sorted(pkg.glob("*.py"))
    names = {module_name(p, tmp_path) for p in files}
    graph = {module_name(p, tmp_path): module_imports(p, names, tmp_path) for p in files}
    assert graph["cgsgan.other"] == {"cgsgan.net"}  # the module, not the package
    assert find_cycle(graph) == ["cgsgan.factory", "cgsgan.net", "cgsgan.factory"]
    assert find_cycle({**graph, "cgsgan.net": set()}) is None


def test_no_package_of_the_project_has_an_import_cycle():
    graph = project_graph()
    assert {"cgsgan.metrics.features", "orchestration.cluster", "sweeps.ablate", "tests.unit.metric_heads"} <= set(graph)
    assert "orchestration.slurm" in graph["orchestration.cluster"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_the_launch_entry_point():
    importers = [m for m, deps in project_graph().items() if "orchestration.launch" in deps]
    assert importers == []
    # and the entry point only composes the config and hands it on
    assert {n for n in imports(ROOT / "orchestration" / "launch.py") if n.startswith("orchestration")} == {
        "orchestration", "orchestration.cluster", "orchestration.config", "orchestration.config.register",
        "orchestration.config.to_typed"}  # fmt: skip


def test_slurm_and_sweeps_reach_ray_through_cluster():
    graph = project_graph("orchestration", "sweeps")
    assert "orchestration.cluster" in graph["sweeps.ablate"]
    assert "orchestration.ray_nodes" in graph["orchestration.slurm"]


def test_no_test_module_imports_another():
    """Shared test code lives in helper modules (tests/unit/small.py, scenes.py, ranks.py, fakes.py;
    tests/integration/launching.py, procs.py, ...), never in a test module another one imports."""
    graph = project_graph("tests")
    tests = {m for m in graph if m.rsplit(".", 1)[-1].startswith("test_")}
    found = sorted(f"{m} imports {o}" for m in tests for o in graph[m] & tests)
    assert not found, found
