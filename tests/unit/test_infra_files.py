"""Static checks of everything under infra/: the files parse, the cluster definitions agree with
infra/cluster_profiles.yaml (and with the Hydra launch config), and nothing looks like a
credential. Fast: no network, no servers."""

from __future__ import annotations

import os
import py_compile
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PROFILES = yaml.safe_load((INFRA / "cluster_profiles.yaml").read_text())
TARGETS = PROFILES["targets"]

YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
SHELL_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".sh", ".sbatch") and p.is_file())


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def as_override(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def overrides_of(profile_part: dict) -> list[str]:
    return [f"{k}={as_override(v)}" for k, v in profile_part.items()]


# --- everything parses -------------------------------------------------------------------------


def test_infra_has_the_expected_files():
    for path in ("local/stack.py", "local/up.sh", "local/down.sh", "s3/bootstrap.py", "ray/cluster-aws.yaml",
                 "ray/README.md", "k8s/rayjob.yaml", "k8s/README.md", "slurm/train.sbatch", "mlflow/docker-compose.yml",
                 "mlflow/mlflow.env.example", "mlflow/README.md", "docker/Dockerfile", "docker/README.md",
                 "cluster_profiles.yaml"):  # fmt: skip
        assert (INFRA / path).is_file(), path
    assert len(YAML_FILES) >= 4


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", SHELL_FILES, ids=rel)
def test_shell_scripts_parse(path):
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.py")), ids=rel)
def test_python_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


# --- the profiles themselves ------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_profile_is_self_consistent_and_splits_the_global_batch(target):
    p = TARGETS[target]
    launch = p["launch"]
    assert p["total_gpus"] == p["nodes"] * p["gpus_per_node"]
    assert launch["cluster.use_gpu"] is True
    assert launch["cluster.num_workers"] * launch["cluster.gpus_per_worker"] == p["total_gpus"]
    workers_per_node, rest = divmod(p["gpus_per_node"], launch["cluster.gpus_per_worker"])
    assert rest == 0 and workers_per_node * p["nodes"] == launch["cluster.num_workers"]
    assert workers_per_node * launch["cluster.cpus_per_worker"] <= p["cpus_per_node"]
    batch = PROFILES["global_batch"]
    assert batch % p["total_gpus"] == 0, f"{target}: global batch {batch} over {p['total_gpus']} GPUs"
    assert batch % launch["cluster.num_workers"] == 0
    for f in p["files"]:
        assert (ROOT / f).is_file(), f


def compose_launch(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from orchestration.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "orchestration" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=overrides))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_profile_overrides_compose_with_the_hydra_config_and_validate(target):
    """The overrides each launch command uses are valid for orchestration/conf and give the
    profile's global batch (train.batch_size), split evenly over the workers."""
    from orchestration.config import validate_launch

    p = TARGETS[target]
    parts = [p["launch"]] + ([p["submitit"]] if "submitit" in p else [])
    for part in parts:
        cfg = compose_launch([f"model={PROFILES['model']}", *overrides_of(part)])
        validate_launch(cfg)
        assert cfg.train.batch_size == PROFILES["global_batch"]
        assert cfg.cluster.num_workers == part["cluster.num_workers"]
        assert cfg.cluster.gpus_per_worker == part["cluster.gpus_per_worker"]
        assert cfg.model.resolution == int(PROFILES["model"].removeprefix("ffhq"))


# --- AWS: Ray cluster launcher ----------------------------------------------------------------


def launch_tokens(command: str) -> list[str]:
    """The launch.py arguments of a shell command line (continuations joined)."""
    tokens = shlex.split(command.replace("\\\n", " "))
    i = next(i for i, t in enumerate(tokens) if t.endswith("orchestration/launch.py"))
    return tokens[i + 1 :]


def test_ray_cluster_yaml_matches_the_aws_profile():
    p = TARGETS["aws"]
    cfg = yaml.safe_load((INFRA / "ray/cluster-aws.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0  # no training on the head
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0}
    assert len(gpu_types) == 1 and len(types) == 2
    (worker,) = gpu_types.values()
    assert worker["node_config"]["InstanceType"] == p["instance_type"]
    assert worker["resources"]["GPU"] == p["gpus_per_node"]
    assert worker["resources"]["CPU"] == p["cpus_per_node"]
    assert worker["min_workers"] == worker["max_workers"] == p["nodes"]
    assert cfg["max_workers"] >= p["nodes"]
    # S3 through instance profiles, never keys; the training image on every node.
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"]
    assert cfg["docker"]["image"].endswith("/cgsgan:latest")


def test_ray_readme_launch_command_uses_the_aws_profile():
    text = (INFRA / "ray/README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (submit,) = [b for b in blocks if "ray job submit" in b]
    command = next(c for c in submit.split("\n\n") if "ray job submit" in c)
    command = "\n".join(line for line in command.splitlines() if not line.lstrip().startswith("#"))
    command = command[command.index("ray job submit") :].split("\nray ")[0]
    args = launch_tokens(command)
    assert f"model={PROFILES['model']}" in args and "storage=s3" in args
    for override in overrides_of(TARGETS["aws"]["launch"]):
        assert override in args, override
    for step in ("ray up", "ray job submit --address", "--working-dir .", "ray down"):
        assert step in text


# --- Kubernetes: KubeRay RayJob ---------------------------------------------------------------


def k8s_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((INFRA / "k8s/rayjob.yaml").read_text()) if d}


def test_rayjob_matches_the_k8s_profile():
    p = TARGETS["k8s"]
    docs = k8s_docs()
    job, sa = docs["RayJob"], docs["ServiceAccount"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == p["nodes"]
    (container,) = group["template"]["spec"]["containers"]
    for kind in ("requests", "limits"):
        assert int(container["resources"][kind]["nvidia.com/gpu"]) == p["gpus_per_node"]
        assert int(container["resources"][kind]["cpu"]) == p["cpus_per_node"]
    assert group["rayStartParams"]["num-gpus"] == str(p["gpus_per_node"])
    assert group["rayStartParams"]["num-cpus"] == str(p["cpus_per_node"])
    assert group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == p["instance_type"]

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["num-cpus"] == "0"
    for c in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})

    # IRSA: the pods run as the annotated service account; no credentials in env.
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for template in (head["template"], group["template"]):
        assert template["spec"]["serviceAccountName"] == sa["metadata"]["name"]
        for c in template["spec"]["containers"]:
            assert not any(e["name"].startswith("AWS_ACCESS") or "SECRET" in e["name"] for e in c.get("env", []))

    args = launch_tokens(spec["entrypoint"])
    assert f"model={PROFILES['model']}" in args
    for override in overrides_of(p["launch"]):
        assert override in args, override


# --- SLURM: the sbatch template ---------------------------------------------------------------

SBATCH = INFRA / "slurm/train.sbatch"


def sbatch_directives() -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", SBATCH.read_text(), flags=re.M):
        out[m.group(1)] = m.group(2) if m.group(2) is not None else ""
    return out


def sbatch_train_args() -> list[str]:
    """TRAIN_ARGS with ${VAR} resolved from the script's defaults (VAR=${VAR:-default} / VAR=value)."""
    text = SBATCH.read_text()
    values = {}
    for m in re.finditer(r"^(\w+)=(?:\$\{\w+:-([^}]*)\}|([^\s$(]+))", text, flags=re.M):
        values[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    block = re.search(r"^TRAIN_ARGS=\((.*?)^\)", text, flags=re.M | re.S).group(1)
    tokens = [t for t in shlex.split(block, comments=True) if t != "$@"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), t) for t in tokens]


def test_sbatch_matches_the_slurm_profile():
    p = TARGETS["slurm"]
    d = sbatch_directives()
    assert int(d["nodes"]) == p["nodes"] == p["submitit"]["slurm.nodes"]
    assert int(d["gpus-per-node"]) == p["gpus_per_node"] == p["submitit"]["slurm.gpus_per_node"]
    assert int(d["cpus-per-task"]) == p["cpus_per_node"] == p["submitit"]["slurm.cpus_per_task"]
    assert d["ntasks-per-node"] == "1"
    for key in ("mem", "time", "partition", "account", "qos", "requeue", "signal"):
        assert key in d, key
    args = sbatch_train_args()
    assert f"model={PROFILES['model']}" in args
    for override in overrides_of(p["launch"]):
        assert override in args, override


def test_sbatch_requeues_on_the_early_signal():
    text = SBATCH.read_text()
    signal = sbatch_directives()["signal"]
    m = re.fullmatch(r"B:USR1@(\d+)", signal)  # B: = to the batch shell, where the trap is
    assert m and int(m.group(1)) >= 60
    assert re.search(r"^trap requeue USR1$", text, flags=re.M)
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in text
    assert "SLURM_RESTART_COUNT" in text and "MAX_REQUEUES" in text
    assert "RAY_ADDRESS" in text
    # Only this job's Ray is stopped (its srun steps): `ray stop` would hit other jobs on the node.
    code = [line.split("#")[0] for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("ray stop" in line for line in code)


def sbatch_code() -> str:
    return "\n".join(line.split("#")[0] for line in SBATCH.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_sbatch_starts_ray_through_the_shared_start_up():
    """The sbatch script and the submitit job start Ray the same way: orchestration/ray_nodes.py
    (port block, token, niceness, `ray start` flags); the script holds no copy of any of it."""
    code = sbatch_code()
    assert 'RAY_NODES=${CODE}/orchestration/ray_nodes.py' in code
    assert re.search(r'python "\$RAY_NODES" job-env --token-dir', code)
    assert re.search(r'python "\$RAY_NODES" start "\$1" --cpus=', code)
    assert re.search(r'python "\$RAY_NODES" wait "\$NODES"', code)
    for copy in ("ray start", "_PORT", "RAY_worker_niceness", "token_hex", "RAY_AUTH_MODE"):
        assert copy not in code, copy


def test_ray_nodes_job_env_gives_the_job_its_port_block_token_and_niceness(tmp_path):
    from orchestration.ray_nodes import NO_PRESTART_ENV, TRAINING_NODE_ENV, kernel_cache, port_block

    for job_id in ("7", "1234", "98765"):
        out = subprocess.run(
            [sys.executable, str(ROOT / "orchestration" / "ray_nodes.py"), "job-env", "--token-dir", str(tmp_path)],
            env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": job_id, "HEAD_IP": "10.1.2.3", "PORT_BASE": "21000"},
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        exported = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in out.stdout.splitlines())
        token = tmp_path / f".ray-token-{job_id}"
        assert exported == {"RAY_ADDRESS": f"10.1.2.3:{port_block(job_id, 21000)['gcs']}", "RAY_AUTH_MODE": "token",
                            "RAY_AUTH_TOKEN_PATH": str(token), "TORCH_EXTENSIONS_DIR": kernel_cache(),
                            **TRAINING_NODE_ENV, **NO_PRESTART_ENV}  # fmt: skip
        assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64


def test_head_and_worker_commands_share_the_job_flags():
    from orchestration.ray_nodes import head_command, port_block, worker_command

    ports = port_block("1234", 20000)
    head = head_command("10.0.0.1", ports, 8, 4, "/tmp/ray-1234")
    worker = worker_command("10.0.0.1", "10.0.0.2", ports, 8, 4, "/tmp/ray-1234")
    assert head[1:3] == ["start", "--head"] and f"--port={ports['gcs']}" in head
    assert f"--dashboard-port={ports['dashboard']}" in head and "--include-dashboard=true" in head
    assert f"--address=10.0.0.1:{ports['gcs']}" in worker and "--node-ip-address=10.0.0.2" in worker
    shared = [a for a in worker if a.startswith("--") and not a.startswith(("--address", "--node-ip"))]
    assert shared and all(a in head for a in shared) and "--block" in shared


def test_every_srun_step_of_the_sbatch_script_gets_the_node_cpus():
    """Since Slurm 22.05 srun does not inherit --cpus-per-task: without it a step is bound to one
    core where the site binds cores (the local test cluster, TaskPlugin=task/none, cannot show it)."""
    code = sbatch_code()
    sruns = re.findall(r"^\s*srun\b.*?(?<!\\)$", code, flags=re.M | re.S)
    assert len(sruns) == 2, sruns  # the head's step and the worker nodes' step
    for srun in sruns:
        assert '--cpus-per-task="${CPUS_PER_NODE}"' in srun, srun
    assert re.search(r"^CPUS_PER_NODE=\$\{SLURM_CPUS_PER_TASK\}$", code, flags=re.M)
    assert re.search(r"^export SRUN_CPUS_PER_TASK=\$\{CPUS_PER_NODE\}$", code, flags=re.M)


def test_a_ray_node_says_how_many_cpus_its_step_really_has(monkeypatch):
    from orchestration import ray_nodes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # a step bound to one core
    line = ray_nodes.cpus_line("head", 64)
    assert "1 usable CPUs (nproc), Ray advertises 64" in line and "warning" in line and "--cpus-per-task" in line
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert "warning" not in ray_nodes.cpus_line("worker", 64)


def test_a_gpu_node_builds_gsplat_kernels_once_before_ray_starts_its_workers(tmp_path, monkeypatch):
    """Where gsplat has no compiled kernels, the first import builds them; 8 workers importing at once
    would race. `ray_nodes.py start` builds them first, in one process, into a node-local cache."""
    from orchestration import ray_nodes

    order = []
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("HEAD_IP", "10.0.0.1")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(ray_nodes, "build_gsplat_kernels", lambda env: order.append(("build", env["TORCH_EXTENSIONS_DIR"])) or "built")

    def execvpe(file, args, env):
        order.append(("ray start", args[1]))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvpe", execvpe)
    with pytest.raises(SystemExit):
        ray_nodes.main(["start", "head", "--cpus=64", "--gpus=8"])
    assert order == [("build", ray_nodes.kernel_cache()), ("ray start", "start")]
    assert ray_nodes.kernel_cache().startswith("/tmp/")  # node-local, not the shared home's ~/.cache


@pytest.mark.parametrize("compiled", [True, False])
def test_the_kernel_build_says_whether_the_node_has_them(tmp_path, compiled):
    """A real process importing gsplat's backend as the node build does: gsplat installed with
    kernels (or able to build them), and without (the PyPI wheel on a node without nvcc)."""
    from orchestration.ray_nodes import build_gsplat_kernels

    backend = tmp_path / "gsplat" / "cuda"
    backend.mkdir(parents=True)
    (tmp_path / "gsplat" / "__init__.py").write_text("")
    (backend / "__init__.py").write_text("")
    (backend / "_backend.py").write_text("import sys\n_C = object()\n" if compiled else
                                         "import sys\nprint('gsplat: No CUDA toolkit found.', file=sys.stderr)\n_C = None\n")
    line = build_gsplat_kernels({"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path), "TORCH_EXTENSIONS_DIR": "/tmp/x"})
    if compiled:
        assert line.startswith("gsplat kernels: ready in ") and "/tmp/x" in line
    else:
        assert line == "gsplat kernels: not available on this node (gsplat: No CUDA toolkit found.)"


def test_the_port_block_holds_the_workers_of_the_readme_node():
    """The README's SLURM node: 64 CPUs, 8 GPUs, 8 Ray Train workers. Ray's raylet prestarts one idle
    worker per CPU unless told not to; every worker process takes a port of the job's block."""
    from orchestration.ray_nodes import node_env, port_block

    env = node_env("/tmp/token")
    prestart_off = env.get("RAY_enable_worker_prestart") == "0" and env.get("RAY_prestart_worker_first_driver") == "0"
    prestarted = 0 if prestart_off else 64
    # the head: 8 training workers, the driver, Ray Train's controller, its placement-group cleaner
    needed = prestarted + 8 + 3
    ports = port_block("1234", 20000)
    assert needed <= ports["max_worker"] - ports["min_worker"] + 1


def test_the_gpu_benchmark_is_one_command_that_fits_a_ten_minute_call():
    """benchmarks/gpu.sh on a fresh one-GPU machine without network: kernels built for the card
    (timed), tests/gpu, the 512 timing, each phase under its own limit, all limits inside 10 minutes
    with room for start-up."""
    script = (ROOT / "benchmarks" / "gpu.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    limits = {name: int(value) for name, value in re.findall(r"^(\w+_S)=\$\{\w+:-(\d+)\}$", code, flags=re.M)}
    assert set(limits) == {"BUILD_S", "TESTS_S", "TIMING_S"} and sum(limits.values()) <= 570, limits
    for name in limits:
        assert len(re.findall(rf'^timeout "\${name}" ', code, flags=re.M)) == 1, name
    assert "torch.cuda.get_device_capability()" in code and "export TORCH_CUDA_ARCH_LIST" in code
    assert "from gsplat.cuda._backend import _C" in code and "pytest tests/gpu" in code
    assert "CGSGAN_REQUIRE_CUDA=1" in code and "benchmarks/gpu.py" in code
    assert not re.search(r"pip install|curl |wget ", code)  # no network


# --- MLflow compose, Docker -------------------------------------------------------------------


def test_mlflow_compose_binds_a_chosen_address_and_proxies_artifacts():
    compose = yaml.safe_load((INFRA / "mlflow/docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow"}
    assert "ports" not in services["postgres"]  # the database is never published
    (port,) = services["mlflow"]["ports"]
    assert port.startswith("${MLFLOW_BIND_ADDR:-127.0.0.1}:")
    command = " ".join(services["mlflow"]["command"])
    assert "--artifacts-destination" in command and "postgresql" in command
    assert "--default-artifact-root" not in command  # proxied, not direct client access
    assert compose["networks"]["backend"]["internal"] is True
    assert "mlflow.env" in (INFRA / "mlflow/.gitignore").read_text().split()


def test_mlflow_env_example_has_no_values_for_secrets():
    for line in (INFRA / "mlflow/mlflow.env.example").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Z_]+", key), line
        assert not key.startswith(("AWS_ACCESS_KEY", "AWS_SECRET", "AWS_SESSION")), f"{key} must stay commented out"
        if "PASSWORD" in key:
            assert value in ("change-me", ""), line


def test_dockerfile_builds_gsplat_for_h100_and_installs_the_project():
    text = (INFRA / "docker/Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:\S+-cuda\S+-devel$", text, flags=re.M)
    assert re.search(r'^ARG TORCH_CUDA_ARCH_LIST="9\.0"$', text, flags=re.M)
    assert "--no-build-isolation" in text and "gsplat.git@" in text
    assert "from gsplat import csrc" in text  # the build fails without the compiled extension
    assert re.search(r"pip install .*-e \.", text)
    assert (INFRA / "docker/Dockerfile.dockerignore").read_text().count(".venv") == 1


def test_the_image_has_the_torch_the_tests_ran_on_nvml_and_pytest():
    """The image's torch is the version of this test run (a CUDA build of it), with nvidia-ml-py
    for the GPU system metrics and pytest for benchmarks/gpu.sh on a machine without network."""
    from importlib.metadata import version

    text = (INFRA / "docker/Dockerfile").read_text()
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(version('torch').split('+')[0])}$", text, flags=re.M)
    assert 'pip install "torch==${TORCH_VERSION}"' in text
    requirements = re.search(r"RUN python -c \"import tomllib;(.*?)> /tmp/requirements.txt", text, flags=re.S).group(1)
    assert "x['gpu']" in requirements and "x['dev']" in requirements and "pynvml" in text
    assert any(d.startswith("nvidia-ml-py") for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
               ["optional-dependencies"]["gpu"])


# --- no credentials ---------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[:=]\s*\S{20,}", re.I),
    "AWS secret access key (quoted key)": re.compile(
        r"aws_secret_access_key['\"]\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{20,}", re.I
    ),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY( BLOCK)?-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
}


def find_secrets(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            text = path.read_bytes().decode("latin-1")
        for what, pattern in SECRET_PATTERNS.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path}:{line}: {what}")
    return hits


def test_no_file_under_infra_looks_like_a_credential():
    assert find_secrets(INFRA) == []


def test_the_credential_check_catches_planted_secrets(tmp_path):
    # Built from pieces so that this test file itself holds no credential-shaped string.
    key_id = "AKIA" + "Q" * 16
    secret = "wJalrXUtnFEMI" + "K7MDENG" + "bPxRfiCY" + "x" * 8
    planted = {
        "a.yaml": f"aws_access_key_id: {key_id}\n",
        "b.env": f"AWS_SECRET_ACCESS_KEY={secret}\n",
        "c.py": f'creds = {{"aws_secret_access_key": "{secret}"}}\n',
        "d.ini": f"[default]\naws_secret_access_key = {secret}\n",
        "e.pem": "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nabc\n",
    }
    for name, text in planted.items():
        (tmp_path / name).write_text(text)
    flagged = {Path(hit.split(":")[0]).name for hit in find_secrets(tmp_path)}
    assert flagged == set(planted)
    (tmp_path / "ok.py").write_text('env = {"AWS_SECRET_ACCESS_KEY": "testing"}\n')
    assert not any("ok.py" in h for h in find_secrets(tmp_path))


def test_every_ray_node_we_start_runs_workers_at_nice_0():
    # Ray's default worker niceness (15) made training steps 3.2x slower on a busy node; every
    # place that starts Ray nodes for training takes orchestration/ray_nodes.py's WORKER_NICENESS:
    # a local Ray (orchestration/cluster.py), both SLURM paths (ray_nodes.node_env), and the
    # cluster definitions that cannot import it (checked here against it).
    import inspect

    from orchestration import cluster
    from orchestration.ray_nodes import TRAINING_NODE_ENV, WORKER_NICENESS, node_env

    assert WORKER_NICENESS == 0 and TRAINING_NODE_ENV == {"RAY_worker_niceness": str(WORKER_NICENESS)}
    assert TRAINING_NODE_ENV.items() <= node_env("/t").items()
    assert '"worker_niceness": WORKER_NICENESS' in inspect.getsource(cluster.connect_ray)
    setting = f"RAY_worker_niceness={WORKER_NICENESS} ray start"
    cluster_yaml = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster_yaml[key] if "ray start" in c]
        assert starts and all(setting in c for c in starts), key
    docs = yaml.safe_load_all((INFRA / "k8s" / "rayjob.yaml").read_text())
    job = next(d for d in docs if d and d.get("kind") == "RayJob")
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env.get("RAY_worker_niceness") == str(WORKER_NICENESS), group["groupName"]
