"""The whole stack on one machine: an S3 endpoint (moto server) and an MLflow tracking server
whose artifacts are proxied into that S3 endpoint. Everything binds to 127.0.0.1.

Used two ways:

* from Python (the integration tests' fixtures)::

      s3 = start_s3(workdir=tmp)                  # moto_server on a free port
      create_bucket(s3.endpoint_url, "cgsgan")
      ml = start_mlflow(None, tmp, s3, "cgsgan")   # mlflow server, artifacts -> s3://cgsgan/mlflow
      ...
      ml.stop(); s3.stop()                         # also done at interpreter exit

* from a shell, detached, with pid files under .tmp/local-stack/::

      python -m infra.local.stack up      # S3 on :9000, bucket cgsgan, MLflow on :5000
      python -m infra.local.stack status
      python -m infra.local.stack down

Each server runs in its own process group (its own session), so stopping it signals every
process it started (mlflow's uvicorn workers included). moto keeps its state in memory: when the
S3 endpoint stops, every object in it is gone.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_START_TIMEOUT_S = 60.0
MLFLOW_START_TIMEOUT_S = 180.0  # about 20 s on an idle 2-core machine; allow for a busy one


class StackError(RuntimeError):
    """A server did not start (the message carries the end of its log)."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def venv_bin(name: str) -> str:
    """A console script installed next to this interpreter (the venv's bin), else from PATH."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def kill_group(pid: int, timeout_s: float = 15.0, reap=None) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL whatever is left after timeout_s.

    reap: called while waiting so that a leader which is our child does not linger as a zombie
    (a zombie still counts as a member of its group); default: os.waitpid without blocking."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        if reap is not None:
            reap()
        else:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass  # not our child: its parent reaps it
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class _Server:
    """A server process in its own process group, with a log file and a health URL."""

    name: str
    port: int
    proc: subprocess.Popen | None
    log_path: Path
    pid: int = 0
    _stopped: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.proc is not None:
            self.pid = self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            os.kill(self.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self) -> None:
        """Stop the server and everything it started; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.pid:
            kill_group(self.pid, reap=self.proc.poll if self.proc is not None else None)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _wait_healthy(self, health_url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()  # whatever it started may still be running in its group
                raise StackError(
                    f"{self.name} exited with {self.proc.returncode if self.proc else '?'} before it was healthy; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if _http_ok(health_url):
                return
            time.sleep(0.25)
        self.stop()
        raise StackError(
            f"{self.name} not healthy at {health_url} after {timeout_s:.0f} s; log {self.log_path}:\n"
            f"{_log_tail(self.log_path)}"
        )


@dataclass
class S3Server(_Server):
    """moto_server serving the S3 API on 127.0.0.1:port (state in memory)."""

    bucket: str = ""  # the bucket made for its users, when one was (fixtures, the CLI)

    @property
    def endpoint_url(self) -> str:
        return self.base_url

    def env(self) -> dict[str, str]:
        """What a client (boto3, pyarrow via Ray, mlflow in direct mode) needs to reach it."""
        return {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}


@dataclass
class MlflowServer(_Server):
    """`mlflow server` with a SQLite backend and artifacts proxied to s3://bucket/prefix."""

    artifacts_destination: str = ""

    @property
    def tracking_uri(self) -> str:
        return self.base_url


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # own session and process group: killpg reaches all of it
        )


def _workdir(workdir: Path | str | None, prefix: str) -> Path:
    path = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    return path.absolute()


def _choose_port(port: int | None, name: str) -> int:
    if port is None:
        return free_port()
    if port_in_use(port):
        raise StackError(f"{name}: port {port} on {HOST} is already in use")
    return port


def start_s3(port: int | None = None, workdir: Path | str | None = None, *, stop_at_exit: bool = True) -> S3Server:
    """Start `moto_server -H 127.0.0.1 -p PORT` and wait until it answers S3 requests.

    port None picks a free one; the log goes to <workdir>/s3.log. The returned server is stopped
    at interpreter exit unless stop_at_exit is False (the detached `up` command)."""
    workdir = _workdir(workdir, "cgsgan-s3-")
    port = _choose_port(port, "S3")
    log_path = workdir / "s3.log"
    env = {**os.environ, **TEST_CREDENTIALS}
    proc = _spawn([venv_bin("moto_server"), "-H", HOST, "-p", str(port)], log_path, env, workdir)
    server = S3Server(name="moto S3", port=port, proc=proc, log_path=log_path)
    if stop_at_exit:
        atexit.register(server.stop)
    # moto's own API answers as soon as the app serves; an S3 ListBuckets follows right after.
    server._wait_healthy(f"{server.base_url}/moto-api/data.json", S3_START_TIMEOUT_S)
    return server


def s3_client(endpoint_url: str, region: str = "us-east-1"):
    """A boto3 S3 client for the local endpoint, with the local (fake) credentials."""
    import boto3

    keys = {name.lower(): TEST_CREDENTIALS[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, **keys)


def create_bucket(endpoint_url: str, name: str) -> None:
    """Create the bucket on the local endpoint (no error if it exists already)."""
    client = s3_client(endpoint_url)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def start_mlflow(
    port: int | None,
    workdir: Path | str | None,
    s3: S3Server,
    bucket: str,
    prefix: str = "mlflow",
    *,
    stop_at_exit: bool = True,
) -> MlflowServer:
    """Start `mlflow server` (SQLite in <workdir>/mlflow.db, artifacts proxied to
    s3://bucket/prefix on the given S3 endpoint) and wait for /health.

    Only the server process gets the S3 endpoint and credentials: clients talk HTTP to the
    server and need no S3 settings. The bucket must exist."""
    workdir = _workdir(workdir, "cgsgan-mlflow-")
    port = _choose_port(port, "MLflow")
    log_path = workdir / "mlflow.log"
    destination = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
    env = {
        **os.environ,
        **s3.env(),
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
        "PYTHONUNBUFFERED": "1",
    }
    # The server must not inherit a client-side tracking setting pointing elsewhere.
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        venv_bin("mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", destination,
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = _spawn(cmd, log_path, env, workdir)
    server = MlflowServer(name="mlflow server", port=port, proc=proc, log_path=log_path,
                          artifacts_destination=destination)  # fmt: skip
    if stop_at_exit:
        atexit.register(server.stop)
    server._wait_healthy(f"{server.base_url}/health", MLFLOW_START_TIMEOUT_S)
    return server


# ----------------------------------------------------------------------------------------------
# CLI: a detached stack under .tmp/local-stack/ with pid files.

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".tmp" / "local-stack"
DEFAULT_BUCKET = "cgsgan"


def _pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def _read_pid(state: Path, name: str) -> tuple[int, int] | None:
    """(pid, port) from a pid file, or None."""
    try:
        pid, port = _pid_file(state, name).read_text().split()
        return int(pid), int(port)
    except (OSError, ValueError):
        return None


PROCESS_MARKERS = {"s3": "moto_server", "mlflow": "mlflow"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _is_our_server(pid: int, name: str) -> bool:
    """The pid still leads its own process group and runs the expected program (a stale pid
    file must never make `down` signal an unrelated process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return os.getpgid(pid) == pid and PROCESS_MARKERS[name] in cmdline
    except (OSError, ProcessLookupError):
        return False


def exports(s3_port: int, mlflow_port: int, bucket: str) -> dict[str, str]:
    return {
        **TEST_CREDENTIALS,
        "AWS_ENDPOINT_URL": f"http://{HOST}:{s3_port}",
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{mlflow_port}",
        "CGSGAN_STORAGE": f"s3://{bucket}/runs",
    }


def _print_exports(values: dict[str, str]) -> None:
    for k, v in values.items():
        print(f"export {k}={v}")


def cmd_up(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    for name in ("s3", "mlflow"):
        running = _read_pid(state, name)
        if running and _is_our_server(running[0], name):
            print(f"{name} already running (pid {running[0]}, port {running[1]}); run `down` first", file=sys.stderr)
            return 1
    s3 = start_s3(args.s3_port, state, stop_at_exit=False)
    _pid_file(state, "s3").write_text(f"{s3.pid} {s3.port}\n")
    try:
        create_bucket(s3.endpoint_url, args.bucket)
        ml = start_mlflow(args.mlflow_port, state, s3, args.bucket, stop_at_exit=False)
    except BaseException:
        s3.stop()
        _pid_file(state, "s3").unlink(missing_ok=True)
        raise
    _pid_file(state, "mlflow").write_text(f"{ml.pid} {ml.port}\n")
    print(f"# S3 (moto, in memory) at {s3.endpoint_url}, bucket {args.bucket}; logs in {state}", file=sys.stderr)
    print(f"# MLflow at {ml.tracking_uri}, artifacts in {ml.artifacts_destination}", file=sys.stderr)
    print("# eval \"$(python -m infra.local.stack env)\" to use it from this shell", file=sys.stderr)
    _print_exports(exports(s3.port, ml.port, args.bucket))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    for name in ("mlflow", "s3"):
        running = _read_pid(state, name)
        if running is None:
            continue
        if _pid_alive(running[0]) and _is_our_server(running[0], name):
            kill_group(running[0])
            print(f"stopped {name} (pid {running[0]})", file=sys.stderr)
        _pid_file(state, name).unlink(missing_ok=True)
    if not args.keep_db:
        # S3 lived in memory: an MLflow database that outlives it would point at lost artifacts.
        (state / "mlflow.db").unlink(missing_ok=True)
    return 0


def _status(state: Path) -> dict[str, tuple[int, int, bool]]:
    out = {}
    for name, path in (("s3", "/moto-api/data.json"), ("mlflow", "/health")):
        running = _read_pid(state, name)
        if running is not None:
            pid, port = running
            out[name] = (pid, port, _is_our_server(pid, name) and _http_ok(f"http://{HOST}:{port}{path}"))
    return out


def cmd_status(args: argparse.Namespace) -> int:
    status = _status(args.state_dir)
    for name in ("s3", "mlflow"):
        if name not in status:
            print(f"{name}: not started")
        else:
            pid, port, ok = status[name]
            print(f"{name}: {'healthy' if ok else 'NOT healthy'} (pid {pid}, http://{HOST}:{port})")
    return 0 if len(status) == 2 and all(v[2] for v in status.values()) else 1


def cmd_env(args: argparse.Namespace) -> int:
    status = _status(args.state_dir)
    if set(status) != {"s3", "mlflow"}:
        print("local stack is not running (python -m infra.local.stack up)", file=sys.stderr)
        return 1
    _print_exports(exports(status["s3"][1], status["mlflow"][1], args.bucket))
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="pid files, logs, mlflow.db (default: .tmp/local-stack)")  # fmt: skip
    common.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket created for runs and MLflow artifacts")
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack",
                                     description="The local stack: S3 endpoint (moto) + MLflow server on 127.0.0.1.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start S3 + MLflow in the background, print the env to export")
    up.add_argument("--s3-port", type=int, default=9000)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", parents=[common], help="stop both servers")
    down.add_argument("--keep-db", action="store_true", help="keep mlflow.db (default: removed with the S3 data)")
    down.set_defaults(func=cmd_down)
    sub.add_parser("status", parents=[common], help="exit 0 if both servers are healthy").set_defaults(func=cmd_status)
    sub.add_parser("env", parents=[common], help="print the export lines of a running stack").set_defaults(func=cmd_env)
    args = parser.parse_args(argv)
    args.state_dir = args.state_dir.absolute()
    try:
        return args.func(args)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
