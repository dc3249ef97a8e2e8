"""Packaging matches the core boundary: `pip install cgsgan` is the model core (what cgsgan/
imports), the extras bring orchestration, GPU rendering and dev tools, and scripts/setup.sh (the
README's commands) installs all of it."""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# import name -> distribution, for what cgsgan/ imports
DISTRIBUTION = {"torch": "torch", "numpy": "numpy", "PIL": "pillow", "gsplat": "gsplat", "pyarrow": "pyarrow"}
# imported inside functions only, for one feature each: an extra brings them
OPTIONAL = {"gsplat": "gpu", "pyarrow": "orchestration"}  # the CUDA renderer; s3:// checkpoints


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;@]", r, maxsplit=1)[0].lower() for r in requirements}


def third_party_imports(top_level_only: bool) -> set[str]:
    found = set()
    for path in (ROOT / "cgsgan").rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return {n for n in found if n not in sys.stdlib_module_names and n not in ("cgsgan", "__future__")}


def test_the_core_dependencies_are_what_the_core_imports():
    everything = third_party_imports(top_level_only=False)
    assert everything <= set(DISTRIBUTION), f"map these imports to a distribution: {everything - set(DISTRIBUTION)}"
    at_import = third_party_imports(top_level_only=True)
    assert not at_import & set(OPTIONAL), "an optional dependency is imported when cgsgan is"
    assert names(PROJECT["dependencies"]) == {DISTRIBUTION[n] for n in everything - set(OPTIONAL)}


def test_the_extras_bring_orchestration_gpu_rendering_and_dev_tools():
    extras = {k: names(v) for k, v in PROJECT["optional-dependencies"].items()}
    assert {"ray", "mlflow", "boto3", "hydra-core", "submitit"} <= extras["orchestration"]
    for module, extra in OPTIONAL.items():
        assert DISTRIBUTION[module] in extras[extra], (module, extra)
    assert extras["gpu"] == {"gsplat", "nvidia-ml-py"}  # nvidia-ml-py: GPU system metrics in MLflow
    assert {"pytest", "moto"} <= extras["dev"]
    assert PROJECT["optional-dependencies"]["all"] == ["cgsgan[orchestration,gpu,dev]"]
    for extra in ("orchestration", "gpu", "dev"):  # nothing of the stack crept back into the core
        assert not extras[extra] & names(PROJECT["dependencies"]), extra


def test_setup_installs_torch_first_then_everything():
    lines = [ln for ln in (ROOT / "scripts" / "setup.sh").read_text().splitlines() if "pip install" in ln]
    torch_line = next(i for i, ln in enumerate(lines) if '"torch==2.13.0"' in ln)
    project_line = next(i for i, ln in enumerate(lines) if '-e ".[all]"' in ln)
    assert torch_line < project_line


def test_every_package_folder_has_an_init():
    # A folder of modules without __init__.py is still found (as a namespace package), but reads
    # unlike the others and has no place for its summary.
    folders = {p.parent for name in ("cgsgan", "orchestration", "sweeps") for p in (ROOT / name).rglob("*.py")}
    assert {f.relative_to(ROOT).as_posix() for f in folders if not (f / "__init__.py").exists()} == set()


BLOCKER = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {"ray", "mlflow", "boto3", "botocore", "hydra", "omegaconf", "submitit", "gsplat", "pyarrow", "matplotlib"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the core install")
sys.meta_path.insert(0, Block())
import cgsgan
for m in pkgutil.walk_packages(cgsgan.__path__, "cgsgan."):
    importlib.import_module(m.name)
from cgsgan import config
from cgsgan.models import build_models
G, D = build_models(config.tiny().model)
print("core ok", len(list(pkgutil.walk_packages(cgsgan.__path__))))
"""


def test_the_core_imports_and_builds_without_any_extra():
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("core ok")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, from a copy of what it is built from (so that the build leaves
    nothing in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in ("cgsgan", "orchestration", "sweeps"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (built,) = tmp.glob("cgsgan-*.whl")
    return built


def test_the_wheel_carries_the_native_renderer_source_and_the_hydra_configs(wheel):
    # An installed (non-editable) cgsgan compiles render/native.cpp on first use, and Hydra reads
    # the launch's and the sweep's YAML from beside their modules: they must ship.
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cgsgan/render/native.cpp", "cgsgan/render/native.py"} <= names
    for conf in ("orchestration/conf", "sweeps/conf"):  # the sweep's groups are links to the launch's
        tree = {f"{conf}/{f}" for f in glob.glob("**/*.yaml", root_dir=ROOT / conf, recursive=True)}
        assert f"{conf}/data/synthetic.yaml" in tree and tree <= names, sorted(tree - names)


def test_the_installed_wheel_launches_from_outside_the_checkout(wheel, tmp_path):
    # A fresh venv with the wheel and nothing of the checkout: its dependencies come from this
    # venv's site-packages through a .pth file (nothing is downloaded), which adds no .pth of its
    # own (the editable install's finder is not run), so cgsgan, orchestration and sweeps can only
    # be the wheel's.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def run(*args: str) -> str:
        done = subprocess.run([str(python), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
        return done.stdout

    where = run("-c", "import cgsgan, orchestration, sweeps; print(cgsgan.__file__, orchestration.__file__, "
                      "sweeps.__file__)").split()
    assert all(Path(f).is_relative_to(site) for f in where), where
    launch = run("-m", "orchestration.launch", "--help")
    # The groups and options only the YAML defines (data/ffhqc.yaml, cluster/slurm.yaml, ...).
    for line in ("cluster: local, ray, slurm", "data: custom, ffhqc, synthetic", "storage: local, s3",
                 "tracking: local, server"):
        assert line in launch, launch[-3000:]
    ablate = run("-m", "sweeps.ablate", "--help")
    # the sweep group is defined by its YAML alone (sweeps/conf/sweep/), and the default question sets 2 kimg
    assert "sweep: camera, paper" in ablate and "total_kimg: 2.0" in ablate, ablate[-3000:]
    assert "usage:" in run("-m", "cgsgan.generate", "--help")
