"""Ablation sweeps: `python sweeps/ablate.py [hydra overrides]`.

Axes (sweep.*, AXES and SweepAxes below; any subset from the command line):
    sweep.views=[1,4]  sweep.grad_averaging=[true,false]
    sweep.camera_mode=[d_projection,g_conditioned,d_none]  sweep.background=[random,white,black]
    sweep.seeds=[0,1]  (repeats per configuration)
Full grid by default; `sweep.only=[...]` keeps a listed subset of trial keys.

Ray Tune runs one trial per configuration; each trial is a driver function that builds the same
TorchTrainer as launch.py (orchestration.ray_trainer.build_trainer) and reports through
TuneReportCallback. The sweep is prepared (config, storage, data) and gets its Ray through
orchestration/cluster.py, as a launch does, so cluster.kind means the same: local starts a Ray
here, ray connects to one, slurm submits one SLURM job that starts Ray on its allocation and runs
the whole sweep there (requeued like a training job; the requeued job resumes the sweep). One
MLflow parent run per sweep, one child run per trial. An interrupted sweep resumes by running the
same command (Tuner.restore; finished trials are not re-run). At the end: a comparison table
(Markdown: mean +- spread over seeds per configuration, then every trial; CSV: every trial) and a
plot (PNG, with error bars), logged to the parent run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from cgsgan.config import Background, CameraMode, ConfigError, to_dict  # noqa: E402
from orchestration import cluster  # noqa: E402
from orchestration.config import (  # noqa: E402
    LaunchConfig,
    register,
    resolve,
    resolve_index_list,
    to_typed,
    validate_launch,
)

METRIC = "metrics/fid_synth"  # what the sweep compares (lower is better)
# The comparison, per configuration over its seeds: the synthetic-heads FID, its multi-view
# variant, FID as a multiple of the real-vs-held-out floor, and how much the Gaussians depend on
# the conditioning camera (0 and 100 dB for a camera-free generator).
COMPARED = {
    METRIC: "fid_synth",
    "metrics/fid3d_synth": "fid3d_synth",
    "metrics/fid_synth_ratio": "fid_synth / floor",
    "metrics/sensitivity": "sensitivity",
    "metrics/psnr_cond": "psnr_cond (dB)",
}
# Also in the per-trial table and the CSV.
EXTRA = ["metrics/fid3d_synth", "metrics/fid_synth_floor", "metrics/fid_synth_ratio", "metrics/sensitivity",
         "metrics/psnr_cond", "loss/G", "loss/D"]  # fmt: skip


# The axes: sweep.<axis> (a list, a field of SweepAxes) -> (the config key its values set, its tag
# in trial keys). Adding an axis is a SweepAxes field and an entry here. The seeds (train.seed,
# tag "s") repeat every configuration.
AXES = {
    "views": ("loss.num_views", "v"),
    "grad_averaging": ("loss.grad_averaging", "avg"),
    "camera_mode": ("model.camera_mode", ""),
    "background": ("loss.background", "bg"),
}
SEED = ("train.seed", "s")


@dataclass
class SweepAxes:
    """The values of every axis (the full grid by default) and how the sweep runs."""

    # Default: the paper's camera question (where the camera goes in) at 4 views, two seeds each,
    # so the table's spread says whether a difference is more than seed noise.
    views: list[int] = field(default_factory=lambda: [4])
    grad_averaging: list[bool] = field(default_factory=lambda: [True])
    camera_mode: list[CameraMode] = field(
        default_factory=lambda: [CameraMode.d_projection, CameraMode.d_none, CameraMode.g_conditioned])
    background: list[Background] = field(default_factory=lambda: [Background.random])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    only: list[str] = field(default_factory=list)  # trial keys to keep; [] = full grid
    name: str = "ablation"
    max_concurrent: int = 0  # 0 = as many as the cluster's CPUs/GPUs fit


@dataclass
class SweepConfig(LaunchConfig):
    sweep: SweepAxes = field(default_factory=SweepAxes)


register()
ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)


def _tagged(tag: str, value) -> str:
    return f"{tag}{int(value) if isinstance(value, bool) else value}"


def config_key(t: dict) -> str:
    """A trial's configuration, e.g. v4-avg1-d_projection-bgrandom: its key without the seed."""
    return "-".join(_tagged(tag, t[axis]) for axis, (_, tag) in AXES.items())


def trial_key(t: dict) -> str:
    """A trial's key, e.g. v4-avg1-d_projection-bgrandom-s0: names its run, selects it in sweep.only."""
    return f"{config_key(t)}-{_tagged(SEED[1], t['seed'])}"


def trials(axes: SweepAxes) -> list[dict]:
    if axes.max_concurrent < 0:
        raise ConfigError(f"sweep.max_concurrent={axes.max_concurrent!r}: must be >= 0 (0 = as many as fit)")
    values = [[v.value if isinstance(v, StrEnum) else v for v in getattr(axes, axis)] for axis in AXES]
    # plain values: they travel through Ray Tune and into MLflow tags
    grid = [dict(zip([*AXES, "seed"], combo)) for combo in itertools.product(*values, axes.seeds)]
    if axes.only:
        keys = {trial_key(t) for t in grid}
        unknown = [k for k in axes.only if k not in keys]
        if unknown:
            raise ConfigError(f"sweep.only: no such trials {unknown}; trial keys are {sorted(keys)}")
        grid = [t for t in grid if trial_key(t) in axes.only]
    if not grid:
        raise ConfigError("the sweep has no trials (an axis is empty)")
    return grid


def trial_config(base: SweepConfig, t: dict) -> LaunchConfig:
    """The launch config of one trial: the base config with the axis values applied (typed and
    checked by OmegaConf as a command-line override would be, then validated)."""
    node = OmegaConf.structured(LaunchConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(LaunchConfig)}))
    for axis, value in t.items():
        key = SEED[0] if axis == "seed" else AXES[axis][0]
        try:
            OmegaConf.update(node, key, value, merge=False)
        except Exception as e:  # a value of the wrong type, a mode that is not one of its values
            raise ConfigError(f"{key}={value!r}: {str(e).splitlines()[0]}") from None
    node.name = f"{base.sweep.name}-{trial_key(t)}"
    return validate_launch(to_typed(node))


def run_trial(config: dict) -> None:
    """A Tune trial: build and fit the same TorchTrainer as launch.py; Tune sees its reports."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestration.ray_trainer import build_trainer
    from orchestration.tracking import Tracker

    config = config["trial"]  # the grid-searched entry of the param space
    cfg: LaunchConfig = to_typed(config["launch"])
    plan = resolve(cfg)
    plan.storage_path = config["storage_path"]
    plan.data_notices = config.get("data_notices", [])
    # Tune may start a trial again after an interruption when its experiment state was saved
    # before the trial ended: a trial whose run finished reports that run's final metrics and
    # trains nothing (its MLflow run stays closed).
    finished = Tracker(plan.tracking_uri, cfg.tracking.experiment, plan.name).finished_metrics()
    if finished is not None:
        print(f"trial {plan.name} already finished: reporting its final metrics", flush=True)
        tune.report(finished)
        return
    print(f"trial {plan.name}: starting ({', '.join(f'{k}={v}' for k, v in config['axes'].items())})", flush=True)
    tags = {"mlflow.parentRunId": config["parent_run_id"], "sweep": config["sweep"],
            **{f"axis.{k}": str(v) for k, v in config["axes"].items()}}  # fmt: skip
    result = build_trainer(cfg, plan, extra_callbacks=[TuneReportCallback()], tags=tags).fit()
    if result.error:
        raise result.error
    if isinstance(result.return_value, dict) and "data_error" in result.return_value:
        from cgsgan.data.dataset import DataError

        raise DataError(result.return_value["data_error"])


def max_concurrent(cfg: SweepConfig) -> int:
    import ray

    if cfg.sweep.max_concurrent > 0:
        return cfg.sweep.max_concurrent
    res = ray.cluster_resources()
    c = cfg.cluster
    fit_cpu = int(res.get("CPU", 1) // max(c.num_workers * c.cpus_per_worker, 1e-9))
    fit = fit_cpu
    if c.use_gpu:
        fit = min(fit, int(res.get("GPU", 0) // max(c.num_workers * c.gpus_per_worker, 1e-9)))
    return max(1, fit)


def run_sweep(cfg: SweepConfig) -> int:
    """The whole sweep, wherever cluster.kind says: the exit code (0 every trial finished or the
    SLURM job was submitted, 1 a trial failed, 2 stopped before anything started)."""
    try:
        grid = trials(cfg.sweep)
        resolve_index_list(cfg, say=cluster.say)  # once, for every trial
        trial_cfgs = [trial_config(cfg, t) for t in grid]
        # Storage, data and the cluster settings are the same for every trial: prepared once.
        base_plan = cluster.prepare(trial_cfgs[0])
    except cluster.PREPARE_ERRORS as e:
        print(f"error: {cluster.one_line(e)}", file=sys.stderr)
        return 2
    # On a batch cluster (slurm) the whole sweep runs as one job, with one logical CPU more on its
    # Ray head for the trial drivers (0.01 CPU each).
    submitted = cluster.run_as_job(cfg, f"sweep-{cfg.sweep.name}", run_sweep, driver_cpus=1,
                                   what=f"sweep {cfg.sweep.name}: {len(grid)} trials")
    if submitted is not None:
        return submitted

    import ray
    from ray import tune

    from orchestration.tracking import Tracker

    storage = f"{base_plan.storage_path}/{cfg.sweep.name}"
    tracker = Tracker(base_plan.tracking_uri, cfg.tracking.experiment, f"sweep-{cfg.sweep.name}",
                      (Path(base_plan.output_dir) / "mlartifacts").as_uri() if not cfg.tracking.uri else None)
    parent = tracker.start(params={"sweep": to_dict(cfg.sweep)}, tags={"cgsgan.sweep": cfg.sweep.name})
    print(f"sweep {cfg.sweep.name}: {len(grid)} trials, MLflow parent run {parent}", flush=True)

    cluster.connect_ray(cfg, extra_cpus=1)  # room for the trial drivers (0.01 CPU each) beside the workers
    space = [
        {"launch": to_dict(tc), "axes": t, "storage_path": storage, "parent_run_id": parent,
         "sweep": cfg.sweep.name, "data_notices": base_plan.data_notices}  # fmt: skip
        for t, tc in zip(grid, trial_cfgs)
    ]
    trainable = tune.with_resources(run_trial, {"cpu": 0.01})
    tune_storage, tune_name = str(Path(base_plan.output_dir) / "tune"), cfg.sweep.name
    path = f"{tune_storage}/{tune_name}"
    if tune.Tuner.can_restore(path):
        print(f"resuming sweep from {path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(space)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(cfg)),
            # verbose=0: Tune's own tables (a 100-row config dump per trial start, a status table every
            # 30 s) drown the trials' tick lines; the sweep prints its trials and the comparison itself.
            run_config=tune.RunConfig(name=tune_name, storage_path=tune_storage, verbose=0),
        )
    results = tuner.fit()

    rows = []
    for r in results:
        axes = r.config["trial"]["axes"]
        m = r.metrics or {}
        rows.append({**axes, "trial": trial_key(axes), "kimg": m.get("progress/kimg"), METRIC: m.get(METRIC),
                     **{k: m.get(k) for k in EXTRA}, "error": str(r.error) if r.error else ""})  # fmt: skip
    out = Path(base_plan.output_dir) / "sweeps" / cfg.sweep.name
    files = write_report(rows, out)
    for f in files:
        tracker.log_artifact(f, "comparison")
    tracker.finish("FINISHED" if all(not r["error"] for r in rows) else "FAILED")
    print((out / "comparison.md").read_text())
    print(f"table: {files[0]}\nplot: {files[2]}")
    ray.shutdown()
    return 0 if all(not r["error"] for r in rows) else 1


def summarize(rows: list[dict]) -> list[dict]:
    """Per configuration (trials that differ only in the seed): the number of seeds that finished
    and, for each compared metric, (mean, spread, values) over them; the spread is the sample
    standard deviation (None with one value)."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["trial"]):
        groups.setdefault(config_key(r), []).append(r)
    out = []
    for key, group in groups.items():
        done = [r for r in group if not r.get("error")]
        entry = {"config": key, "seeds": len(done), "failed": len(group) - len(done)}
        for metric in COMPARED:
            values = [float(r[metric]) for r in done if isinstance(r.get(metric), (int, float))]
            mean = statistics.fmean(values) if values else None
            spread = statistics.stdev(values) if len(values) > 1 else None
            entry[metric] = (mean, spread, values)
        out.append(entry)
    return out


def write_report(rows: list[dict], out: Path) -> list[Path]:
    """comparison.csv (every trial), comparison.md (per configuration: mean +- spread over its
    seeds of each compared metric and the number of seeds; then every trial) and comparison.png
    (the same per configuration, with error bars and the seeds as points)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cols = ["trial", *AXES, "seed", "kimg", METRIC, *EXTRA, "error"]
    rows = sorted(rows, key=lambda r: r["trial"])
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({c: r.get(c) for c in cols} for r in rows)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def mean_spread(mean, spread, _values):
        if mean is None:
            return "-"
        return fmt(mean) if spread is None else f"{fmt(mean)} ± {fmt(spread)}"

    summary = summarize(rows)
    head = ["configuration", "seeds", *COMPARED.values()]
    md = ["Mean ± standard deviation over seeds (lower is better for the FIDs; sensitivity 0 and psnr_cond 100 dB "
          "for a camera-free generator).", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for e in summary:
        seeds = str(e["seeds"]) + (f" ({e['failed']} failed)" if e["failed"] else "")
        md.append("| " + " | ".join([e["config"], seeds, *(mean_spread(*e[m]) for m in COMPARED)]) + " |")
    md += ["", "Every trial:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    (out / "comparison.md").write_text("\n".join(md) + "\n")

    # One panel per metric, the configurations down the shared y axis: mean +- std, seeds as points.
    fig, axes = plt.subplots(1, len(COMPARED), sharey=True,
                             figsize=(3.0 * len(COMPARED), max(2.8, 0.45 * len(summary) + 1.6)))  # fmt: skip
    y = list(range(len(summary)))
    for ax, (metric, label) in zip(axes, COMPARED.items()):
        for i, e in enumerate(summary):
            mean, spread, values = e[metric]
            ax.scatter(values, [i] * len(values), color="C0", alpha=0.45, s=14, zorder=2)
            if mean is not None:
                ax.errorbar(mean, i, xerr=spread or 0.0, fmt="o", color="C1", capsize=4, zorder=3)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{e['config']} (n={e['seeds']})" for e in summary], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Ablation at the end of training: mean ± std over seeds (orange), seeds (blue)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    plt.close(fig)
    (out / "comparison.json").write_text(json.dumps(rows, indent=1, default=str))
    return [out / "comparison.csv", out / "comparison.md", out / "comparison.png"]


# An absolute path: imported as sweeps.ablate (see __main__ below), Hydra would look for the
# relative "conf" as a Python package.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="ablate")
def main(dcfg: DictConfig) -> None:
    try:
        cfg: SweepConfig = to_typed(dcfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_sweep(cfg))


if __name__ == "__main__":
    # Run as the module sweeps.ablate, not __main__: what a SLURM job and Ray Tune pickle by
    # reference (run_sweep, run_trial, SweepConfig) must be importable again where they run.
    from sweeps import ablate

    ablate.main()
