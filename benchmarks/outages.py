"""What an outage of the tracking server or of the checkpoint storage costs a training run.

Against the local stack (moto S3 + mlflow server, started here on free ports), the same tiny run
(storage=s3, tracking=server, a checkpoint every tick) is launched undisturbed and then with one
outage at tick 2: the MLflow server's process group paused 90 s (SIGSTOP/SIGCONT), the S3
endpoint's paused 90 s, the MLflow server stopped for good. Prints each run's wall time, exit code
and the console lines about the outage. `--root` runs another checkout (e.g. a clone of an older
main) for before/after numbers; its Python environment is this one's.

    python -m benchmarks.outages [--root PATH] [--cases baseline,mlflow_pause,...] [--timeout 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from infra.local.stack import create_bucket, start_mlflow, start_s3
from tests.integration.outages import pause_group, timed_launch
from tests.integration.procs import ray_tmpdir, stop_ray

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "data.synthetic_identities=32", "data.synthetic_views=2", "train.batch_size=8", "loss.num_views=2",
    "train.tick_kimg=0.016", "train.snapshot_ticks=4", "train.checkpoint_ticks=1", "train.metric_samples=16",
    "cluster.max_failures=0", "storage.num_to_keep=2", "train.feature_extractor=random",
    "tracking.system_metrics_interval_s=5",
]  # fmt: skip
CASES = ("baseline", "mlflow_pause", "s3_pause", "mlflow_stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--kimg", type=float, default=0.192)
    p.add_argument("--pause", type=float, default=90)
    p.add_argument("--timeout", type=float, default=400)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cgsgan-outages-"))
    s3 = start_s3(workdir=work / "s3")
    create_bucket(s3.endpoint_url, "outages")
    servers = {"mlflow": start_mlflow(None, work / "mlflow", s3, "outages")}
    try:
        for case in args.cases.split(","):
            ml = servers["mlflow"]
            if case == "mlflow_stopped":  # its own server: this one goes for good
                ml = start_mlflow(None, work / "mlflow-stopped", s3, "outages", prefix="stopped")
            action = {
                "baseline": None,
                "mlflow_pause": lambda ev, t0: pause_group(ml.pid, args.pause, ev, t0),
                "s3_pause": lambda ev, t0: pause_group(s3.pid, args.pause, ev, t0),
                "mlflow_stopped": lambda ev, t0: (ml.stop(), ev.append("mlflow stopped")),
            }[case]
            ray_tmp = ray_tmpdir()
            env = {**os.environ, **s3.env(), "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1",
                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
            env.pop("RAY_ADDRESS", None)
            cmd = [sys.executable, "orchestration/launch.py", *RUN, f"train.total_kimg={args.kimg}", "storage=s3",
                   "storage.path=s3://outages/runs", f"tracking.uri={ml.tracking_uri}", f"output_dir={work / 'out'}",
                   f"name=outage-{case}"]  # fmt: skip
            try:
                out = timed_launch(args.root, cmd, env, {2: action} if action else None, timeout_s=args.timeout)
            finally:
                stop_ray(ray_tmp)
                shutil.rmtree(ray_tmp, ignore_errors=True)
            about = [ln for ln in out.console.splitlines()
                     if any(w in ln for w in ("Retrying", "unreachable", "reachable again", "storage", "tracking",
                                              "warning", "error"))]  # fmt: skip
            ticks = [ln for ln in out.console.splitlines() if " tick " in ln or ln.startswith("tick ")]
            print(f"{case}: rc {out.rc}, wall {out.wall_s:.1f} s, ticks {len(ticks)}, {len(about)} outage lines; "
                  f"{'; '.join(out.events)}", flush=True)  # fmt: skip
            for ln in about[:8]:
                print(f"    | {ln[:200]}", flush=True)
            if case == "mlflow_stopped":
                ml.stop()
    finally:
        for srv in servers.values():
            srv.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
