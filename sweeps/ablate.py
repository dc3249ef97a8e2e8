"""Ablation sweeps: `python sweeps/ablate.py [hydra overrides]`.

Axes (sweep.*, AXES and SweepAxes below; any subset from the command line):
    sweep.views=[1,4]  sweep.grad_averaging=[true,false]
    sweep.camera_mode=[d_projection,g_conditioned,d_none]  sweep.background=[random,white,black]
    sweep.seeds=[0,1]  (repeats per configuration)
sweep.design=grid (every combination) or one_at_a_time (the reference configuration, the first
value of every axis, and each other value of one axis with the rest at the reference);
`sweep.only=[...]` keeps a listed subset of trial keys. Two sweeps come ready: sweep=camera (the
default: camera in the generator against the camera-free generator, 3 seeds, about 20 minutes on 2
CPU cores) and sweep=paper (the paper's four questions one at a time, 3 seeds, 70 minutes measured on
2 shared CPU cores: benchmarks/results/ablation.md).
The compared metrics are registry names (sweep.metrics, cgsgan.metrics.evaluation.METRICS): the
trials compute them at the end of training with train.metric_samples generated images.

Ray Tune runs one trial per configuration; each trial is a driver function that builds the same
TorchTrainer as launch.py (orchestration.ray_trainer.build_trainer) and reports through
TuneReportCallback. The sweep is prepared (config, storage, data) and gets its Ray through
orchestration/cluster.py, as a launch does, so cluster.kind means the same: local starts a Ray
here, ray connects to one, slurm submits one SLURM job that starts Ray on its allocation and runs
the whole sweep there (requeued like a training job; the requeued job resumes the sweep). One
MLflow parent run per sweep, one child run per trial (each axis and the seed as a param of the
same name in every trial: `params.camera_mode = 'd_none'` in the UI's search). Every path a trial
writes is the driver's, made absolute before Ray starts (a trial runs in a working directory Ray
Tune makes under its temp dir). An interrupted sweep resumes by running the same command
(Tuner.restore; finished trials are not re-run). At the end (sweeps/report.py): a comparison table
(Markdown: mean +- spread over seeds per configuration; each non-reference arm of an axis against
the reference arm, paired over seeds, with a bootstrap 95% interval and a verdict; every trial;
CSV: every trial) and a plot (PNG), logged to the parent run, the trials and the differences also
as MLflow tables.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from cgsgan.config import Background, CameraMode, ConfigError, DataSource, to_dict  # noqa: E402
from cgsgan.metrics.evaluation import Column, check_metrics, compared_metrics  # noqa: E402
from cgsgan.metrics.features import extractor_suffix  # noqa: E402
from orchestration import cluster  # noqa: E402
from orchestration.config import (  # noqa: E402
    LaunchConfig,
    register,
    resolve,
    resolve_index_list,
    to_typed,
    validate_launch,
)
from sweeps.report import (  # noqa: E402  (the paired statistics and the files)
    EXTRA,
    differences_table,
    floors,
    paired_differences,
    reported,
    trial_columns,
    write_report,
)

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
# What each axis asks, for the sweep's opening lines.
QUESTIONS = {
    "views": "how many views of each head the discriminator sees per step",
    "grad_averaging": "averaging the generator's gradients over the views of a head",
    "camera_mode": "where the camera goes in (discriminator projection, none, or the generator)",
    "background": "the background colour behind rendered and real heads",
}


class Design(StrEnum):
    grid = "grid"  # every combination of the axes' values
    one_at_a_time = "one_at_a_time"  # the reference configuration and each arm of one axis beside it


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
    design: Design = Design.grid
    only: list[str] = field(default_factory=list)  # trial keys to keep; [] = every trial of the design
    name: str = "ablation"
    max_concurrent: int = 0  # 0 = as many as the cluster's CPUs/GPUs fit
    # What the trials are compared on (registry names; each brings its columns with their
    # direction, the first column is the headline); the trials compute them.
    metrics: list[str] = field(
        default_factory=lambda: ["fid", "fid3d", "fid_novel", "fid_bg", "sensitivity", "psnr_cond"])
    # Minutes a trial takes where this sweep was measured (0 = unknown): the expected time said up
    # front; the ETA during the sweep follows the trials' own times.
    minutes_per_trial: float = 0.0


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
    values = axis_values(axes)
    if any(not v for v in values.values()) or not axes.seeds:
        raise ConfigError("the sweep has no trials (an axis is empty)")
    # plain values: they travel through Ray Tune and into MLflow tags
    if axes.design == Design.one_at_a_time:
        reference = {axis: v[0] for axis, v in values.items()}
        configs = [reference] + [{**reference, axis: arm} for axis, v in values.items() for arm in v[1:]]
    else:
        configs = [dict(zip(AXES, combo)) for combo in itertools.product(*values.values())]
    # Seed by seed: every configuration of seed 0 runs before seed 1's, so the pairs complete early.
    grid = [{**c, "seed": seed} for seed in axes.seeds for c in configs]
    if axes.only:
        keys = {trial_key(t) for t in grid}
        unknown = [k for k in axes.only if k not in keys]
        if unknown:
            raise ConfigError(f"sweep.only: no such trials {unknown}; trial keys are {sorted(keys)}")
        grid = [t for t in grid if trial_key(t) in axes.only]
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
    # The trials compute what the sweep compares (with whatever else the base config asks for).
    node.train.snapshot_metrics = list(dict.fromkeys([*base.train.snapshot_metrics, *base.sweep.metrics]))
    node.name = f"{base.sweep.name}-{trial_key(t)}"
    # The trial runs in Ray Tune's working directory for it: a relative output_dir would put its
    # MLflow store, metrics and samples there.
    node.output_dir = str(Path(base.output_dir).absolute())
    return validate_launch(to_typed(node))


def compared_columns(cfg: SweepConfig) -> list[Column]:
    """The columns the sweep compares: the registry's for sweep.metrics, named for the feature
    network the trials use."""
    try:
        names = check_metrics(cfg.sweep.metrics, ground_truth=cfg.data.source == DataSource.synthetic)
    except ValueError as e:
        raise ConfigError(f"sweep.metrics={list(cfg.sweep.metrics)}: {e}") from None
    columns = compared_metrics(extractor_suffix(cfg.train.feature_extractor), names)
    if not columns:
        raise ConfigError(f"sweep.metrics={list(cfg.sweep.metrics)}: none of them has a compared column "
                          f"(compared: {sorted({c.request for c in compared_metrics()})})")
    return columns


def opening(cfg: SweepConfig, grid: list[dict], columns: list[Column], concurrent: int) -> list[str]:
    """What the sweep says before it starts: the question, the trials and the expected time."""
    values = axis_values(cfg.sweep)
    arms = [f"{axis}={', '.join(map(str, v[1:]))} against {axis}={v[0]} ({QUESTIONS[axis]})"
            for axis, v in values.items() if len(v) > 1]  # fmt: skip
    fixed = ", ".join(f"{axis}={v[0]}" for axis, v in values.items() if len(v) == 1)
    lines = [f"sweep {cfg.sweep.name}: " + ("; ".join(arms) if arms else "one configuration, no arm to compare")
             + (f"; fixed: {fixed}" if fixed else ""),
             f"  {len(grid)} trials ({cfg.sweep.design.value}, seeds {list(cfg.sweep.seeds)} shared by every arm, "
             f"{cfg.train.total_kimg:g} kimg each), compared at the end of training on "
             + ", ".join(f"{c.label} ({c.key}, {c.better.value} is better)" for c in columns)
             + f" from {cfg.train.metric_samples} generated images"]  # fmt: skip
    if cfg.train.metric_samples < 1024:
        lines.append(f"  note: train.metric_samples={cfg.train.metric_samples} is below 1024: the metrics are "
                     "noisier than a comparison should rely on")
    if cfg.sweep.minutes_per_trial > 0:
        total = cfg.sweep.minutes_per_trial * math.ceil(len(grid) / concurrent)
        lines.append(f"  expected time: about {total:.0f} min ({len(grid)} trials of about "
                     f"{cfg.sweep.minutes_per_trial:g} min, {concurrent} at a time; sweep.minutes_per_trial was "
                     "measured on 2 CPU cores: the ETA below follows this machine's own trials)")
    else:
        lines.append(f"  expected time: known after the first trial ({concurrent} at a time)")
    return lines


def axis_values(axes: SweepAxes) -> dict[str, list]:
    """Each axis's values as listed (plain values); the first is the axis's reference arm."""
    return {axis: [v.value if isinstance(v, StrEnum) else v for v in getattr(axes, axis)] for axis in AXES}


def trial_params(t: dict) -> dict[str, str]:
    """A trial's axes and seed as MLflow params, named as in the sweep (views, camera_mode, ..., seed)."""
    return {k: str(v) for k, v in t.items()}


REPLAYED = "sweep/replayed"  # a trial that only reported the metrics of its finished run


def run_trial(config: dict) -> None:
    """A Tune trial: build and fit the same TorchTrainer as launch.py; Tune sees its reports."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestration.ray_trainer import build_trainer
    from orchestration.tracking import Tracker, local_artifact_root

    config = config["trial"]  # the grid-searched entry of the param space
    cfg: LaunchConfig = to_typed(config["launch"])
    plan = resolve(cfg)
    plan.storage_path = config["storage_path"]
    plan.data_notices = config.get("data_notices", [])
    # Tune may start a trial again after an interruption when its experiment state was saved
    # before the trial ended: a trial whose run finished reports that run's final metrics and
    # trains nothing (its MLflow run stays closed).
    tracker = Tracker(plan.tracking_uri, cfg.tracking.experiment, plan.name,
                      local_artifact_root(plan.output_dir, bool(cfg.tracking.uri)))
    finished = tracker.finished_metrics()
    if finished is not None:
        print(f"trial {plan.name} already finished: reporting its final metrics", flush=True)
        tune.report({**finished, REPLAYED: 1})
        return
    print(f"trial {plan.name}: starting ({', '.join(f'{k}={v}' for k, v in config['axes'].items())})", flush=True)
    tags = {"mlflow.parentRunId": config["parent_run_id"], "sweep": config["sweep"],
            **{f"axis.{k}": str(v) for k, v in config["axes"].items()}}  # fmt: skip
    # The child run, with the axes as params, before the workers start: rank 0 continues it
    # (found by its run name) and adds the config's params.
    tracker.start(params=trial_params(config["axes"]), tags=tags)
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
        columns = compared_columns(cfg)
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

    from orchestration.tracking import Tracker, local_artifact_root

    storage = f"{base_plan.storage_path}/{cfg.sweep.name}"
    tracker = Tracker(base_plan.tracking_uri, cfg.tracking.experiment, f"sweep-{cfg.sweep.name}",
                      local_artifact_root(base_plan.output_dir, bool(cfg.tracking.uri)))
    parent = tracker.start(params={"sweep": to_dict(cfg.sweep)}, tags={"cgsgan.sweep": cfg.sweep.name})
    view = share_view(tracker, cfg.sweep, columns)

    cluster.connect_ray(cfg, extra_cpus=1)  # room for the trial drivers (0.01 CPU each) beside the workers
    concurrent = max_concurrent(cfg)
    print("\n".join(opening(cfg, grid, columns, concurrent)) + f"\n  MLflow parent run {parent}", flush=True)
    from sweeps.progress import SweepProgress

    progress = SweepProgress(cfg.sweep.name, len(grid), concurrent, REPLAYED,
                             key=lambda trial: trial_key(trial.config["trial"]["axes"]))
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
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
            # verbose=0: Tune's own tables (a 100-row config dump per trial start, a status table every
            # 30 s) drown the trials' tick lines; the sweep prints its progress and the comparison itself.
            run_config=tune.RunConfig(name=tune_name, storage_path=tune_storage, verbose=0, callbacks=[progress]),
        )
    results = tuner.fit()

    rows = []
    for r in results:
        axes = r.config["trial"]["axes"]
        m = r.metrics or {}
        rows.append({**axes, "config": config_key(axes), "trial": trial_key(axes), "kimg": m.get("progress/kimg"),
                     **{k: m.get(k) for k in [*map(reported, columns), *EXTRA]},
                     **{k: m[k] for k in floors([m])},
                     "error": str(r.error) if r.error else ""})  # fmt: skip
    out = Path(base_plan.output_dir) / "sweeps" / cfg.sweep.name
    files = write_report(rows, axis_values(cfg.sweep), out, columns)
    for f in files:
        tracker.log_artifact(f, "comparison")
    log_tables(tracker, rows, axis_values(cfg.sweep), columns)
    tracker.finish("FINISHED" if all(not r["error"] for r in rows) else "FAILED")
    print((out / "comparison.md").read_text())
    print(f"table: {files[0]}\nplot: {files[2]}")
    server = base_plan.tracking_uri if base_plan.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    if not base_plan.tracking_uri.startswith("http"):
        print(f"MLflow: mlflow ui --backend-store-uri {base_plan.tracking_uri}, then open")
    print(f"the trials in MLflow: {server.rstrip('/')}/{view}")
    ray.shutdown()
    return 0 if all(not r["error"] for r in rows) else 1


def share_view(tracker, axes: SweepAxes, columns: list[Column]) -> str:
    """The sweep's view of the experiment's runs page: its trials with every axis, the seed and the
    headline metric as columns (the UI puts metric columns first and draws only the columns in
    sight: more metrics would push the axes out of view), grouped by the axes that vary (the
    table shows each configuration's mean over its seeds); its chart view opens on the headline
    metric, a bar a trial (the trial's name says its arm), and every trial's newest grid side by
    side. Returns the page's path (in the UI's model-training layout)."""
    from orchestration.tracking import NEWEST_GRID_KEY, bar_chart, image_chart

    varying = [axis for axis, values in axis_values(axes).items() if len(values) > 1]
    headline = reported(columns[0])
    return tracker.share_view(f"sweep-{axes.name}", f"tags.sweep = '{axes.name}'", [*AXES, "seed"], [headline],
                              varying, section=f"sweep {axes.name}: {columns[0].label} and the newest grids",
                              charts=[bar_chart(headline), image_chart(NEWEST_GRID_KEY)])  # fmt: skip


def log_tables(tracker, rows: list[dict], axes: dict[str, list], columns: list[Column]) -> None:
    """The parent run's MLflow tables: one row per trial (its axes, metrics and verdict, as
    write_report set it) and the paired differences with their intervals and verdicts."""
    cols = trial_columns(list(AXES), columns, rows)
    tracker.log_table([{c: r.get(c) for c in cols} for r in sorted(rows, key=lambda r: r["trial"])],
                      "comparison/trials.json")
    differences = differences_table(paired_differences(rows, axes, columns))
    if differences:
        tracker.log_table(differences, "comparison/differences.json")


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
