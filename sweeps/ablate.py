"""Ablation sweeps: `python sweeps/ablate.py [hydra overrides]`.

Axes (sweep.*; each is one row of orchestration/axes.py's AXIS_TABLE, its only place; any subset from the
command line):
    sweep.views=[1,4]  sweep.grad_averaging=[true,false]
    sweep.camera_mode=[d_projection,g_conditioned,d_none]  sweep.background=[random,white,black]
    sweep.seeds=[0,1]  (repeats per configuration)
sweep.design=grid (every combination) or one_at_a_time (the reference configuration, the first
value of every axis, and each other value of one axis with the rest at the reference);
`sweep.only=[...]` keeps a listed subset of trial keys. `sweep.seeds=auto` runs seeds in rounds
(sweep.seeds_per_round, at most sweep.max_rounds, within sweep.budget_minutes) and adds rounds only
to the comparisons still open; `sweep.margin.<metric>=M` lets a comparison be equivalent within ±M
(docs/sweeps.md: the statistics). Two sweeps come ready: sweep=camera (the
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
(Tuner.restore; finished trials are not re-run); another question under its name is refused
(sweeps/question.py). At the end (sweeps/report.py): a comparison table
(Markdown: mean +- spread over seeds per configuration; each non-reference arm of an axis against
the reference arm, paired over seeds, with bootstrap and t 95% intervals, Holm's adjusted p and a
verdict; every trial;
CSV: every trial) and a plot (PNG), logged to the parent run, the trials and the differences also
as MLflow tables.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from cgsgan.config import ConfigError, DataSource, to_dict  # noqa: E402
from cgsgan.metrics.evaluation import Column, check_metrics, compared_metrics  # noqa: E402
from cgsgan.metrics.feature_factory import extractor_suffix  # noqa: E402
from orchestration import cluster  # noqa: E402
from orchestration.axes import AXES, AXIS_TABLE, SEED  # noqa: E402  (the axes' one table)
from orchestration.worker_spec import WorkerResult  # noqa: E402
from orchestration.config import (  # noqa: E402
    LaunchConfig,
    presets,
    register,
    resolve,
    resolve_index_list,
    resolve_paths,
    to_typed,
    validate_launch,
)
from sweeps import significance  # noqa: E402
from sweeps.question import check_question, record_question  # noqa: E402
from sweeps.report import (  # noqa: E402  (the paired statistics and the files)
    EXTRA,
    Difference,
    Verdict,
    differences_table,
    floors,
    paired_differences,
    reported,
    trial_columns,
    write_report,
)

AUTO = "auto"  # sweep.seeds=auto: seeds in rounds until each comparison is answered
SPREADS = Path(__file__).resolve().parent / "spreads.json"  # measured spreads per preset (benchmarks/ablation.py)


class Design(StrEnum):
    grid = "grid"  # every combination of the axes' values
    one_at_a_time = "one_at_a_time"  # the reference configuration and each arm of one axis beside it


@dataclass
class SweepSettings:
    """How the sweep runs (SweepAxes adds a list per axis of AXIS_TABLE)."""

    # Repeats of every configuration, shared by every arm (paired), or "auto": rounds of
    # seeds_per_round new seeds, added only to the comparisons still open, at most max_rounds
    # rounds (the looks the error rate is spent over) and within budget_minutes (0 = no limit).
    seeds: Any = field(default_factory=lambda: [0, 1])
    seeds_per_round: int = 3
    max_rounds: int = 4
    budget_minutes: float = 0.0
    spending: significance.Spending = significance.Spending.pocock
    # Equivalence margins by compared metric (registry name: sweep.margin.fid=50; null = none): a
    # comparison whose intervals both lie inside +-margin is "equivalent within margin". Every
    # name is listed so that the command line can set one (Hydra refuses new keys).
    margin: dict[str, Optional[float]] = field(
        default_factory=lambda: dict.fromkeys(sorted({c.request for c in compared_metrics()})))
    # The preset whose measured spreads (sweeps/spreads.json) plan the sweep's power ("" = name).
    spreads: str = ""
    design: Design = Design.grid
    only: list[str] = field(default_factory=list)  # trial keys to keep; [] = every trial of the design
    name: str = "ablation"
    max_concurrent: int = 0  # 0 = as many as the cluster's CPUs/GPUs fit
    # What the trials are compared on (registry names; each brings its columns with their
    # direction, the first column is the headline); the trials compute them.
    metrics: list[str] = field(
        default_factory=lambda: ["fid", "fid3d", "fid_novel", "fid_bg", "geometry", "sensitivity", "psnr_cond"])
    # Minutes a trial takes where this sweep was measured, with model=tiny (0 = unknown): the
    # expected time said up front (unknown for another model); the ETA during the sweep follows
    # the trials' own times.
    minutes_per_trial: float = 0.0


SweepAxes = dataclasses.make_dataclass(
    "SweepAxes", [(a.name, list[a.type], field(default_factory=lambda d=a.default: list(d))) for a in AXIS_TABLE],
    bases=(SweepSettings,),
    namespace={"__doc__": "The values of every axis (AXIS_TABLE's defaults) and how the sweep runs."})
SweepAxes.__module__ = __name__  # pickled by reference (a SLURM job, Ray Tune)


@dataclass
class SweepConfig(LaunchConfig):
    sweep: SweepAxes = field(default_factory=SweepAxes)


register()
ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)


def _tagged(tag: str, value) -> str:
    return f"{tag}{int(value) if isinstance(value, bool) else value}"


def config_key(t: dict) -> str:
    """A trial's configuration, e.g. v4-avg1-d_projection-bgrandom: its key without the seed."""
    return "-".join(_tagged(a.tag, t[a.name]) for a in AXIS_TABLE)


def trial_key(t: dict) -> str:
    """A trial's key, e.g. v4-avg1-d_projection-bgrandom-s0: names its run, selects it in sweep.only."""
    return f"{config_key(t)}-{_tagged(SEED[1], t['seed'])}"


def sequential(axes: SweepAxes) -> bool:
    """sweep.seeds=auto (checked: else a list of integer seeds)."""
    if axes.seeds == AUTO:
        for key in ("seeds_per_round", "max_rounds"):
            if getattr(axes, key) < 1:
                raise ConfigError(f"sweep.{key}={getattr(axes, key)!r}: must be >= 1 with sweep.seeds={AUTO}")
        if axes.budget_minutes < 0:
            raise ConfigError(f"sweep.budget_minutes={axes.budget_minutes!r}: must be >= 0 (0 = no limit)")
        if axes.only:
            raise ConfigError(f"sweep.only cannot be combined with sweep.seeds={AUTO} (rounds choose the trials)")
        return True
    if not isinstance(axes.seeds, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in axes.seeds):  # fmt: skip
        raise ConfigError(f"sweep.seeds={axes.seeds!r}: a list of integer seeds or {AUTO}")
    return False


def round_seeds(axes: SweepAxes, look: int) -> list[int]:
    """The seeds of round `look` (1-based) of a sequential sweep: new ones each round."""
    return list(range((look - 1) * axes.seeds_per_round, look * axes.seeds_per_round))


def design_configs(axes: SweepAxes) -> list[dict]:
    """The configurations of the design (trials without their seed), plain values: they travel
    through Ray Tune and into MLflow tags."""
    values = axis_values(axes)
    if axes.design == Design.one_at_a_time:
        reference = {axis: v[0] for axis, v in values.items()}
        return [reference] + [{**reference, axis: arm} for axis, v in values.items() for arm in v[1:]]
    return [dict(zip(AXES, combo)) for combo in itertools.product(*values.values())]


def round_trials(axes: SweepAxes, look: int, open_arms: set[tuple[str, str]]) -> list[dict]:
    """Round `look` of a sequential sweep: its new seeds for the configurations of the comparisons
    still open (axis, arm), each arm's configuration with its reference partner."""
    reference = {axis: v[0] for axis, v in axis_values(axes).items()}
    keep: dict[str, dict] = {}
    for c in design_configs(axes):
        for axis, arm in sorted(open_arms):
            if str(c[axis]) == arm:
                for x in (c, {**c, axis: reference[axis]}):
                    keep.setdefault(config_key(x), x)
    return [{**c, "seed": seed} for seed in round_seeds(axes, look) for c in keep.values()]


def trials(axes: SweepAxes) -> list[dict]:
    """The trials to run (a sequential sweep: those of its first round)."""
    if axes.max_concurrent < 0:
        raise ConfigError(f"sweep.max_concurrent={axes.max_concurrent!r}: must be >= 0 (0 = as many as fit)")
    seeds = round_seeds(axes, 1) if sequential(axes) else axes.seeds
    if any(not v for v in axis_values(axes).values()) or not seeds:
        raise ConfigError("the sweep has no trials (an axis is empty)")
    # Seed by seed: every configuration of seed 0 runs before seed 1's, so the pairs complete early.
    grid = [{**c, "seed": seed} for seed in seeds for c in design_configs(axes)]
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
        key = SEED[0] if axis == "seed" else AXES[axis].key
        try:
            OmegaConf.update(node, key, value, merge=False)
        except Exception as e:  # a value of the wrong type, a mode that is not one of its values
            raise ConfigError(f"{key}={value!r}: {str(e).splitlines()[0]}") from None
    # The trials compute what the sweep compares (with whatever else the base config asks for).
    node.train.snapshot_metrics = list(dict.fromkeys([*base.train.snapshot_metrics, *base.sweep.metrics]))
    node.name = f"{base.sweep.name}-{trial_key(t)}"
    # The trial runs in Ray Tune's working directory for it: a relative output_dir would put its
    # MLflow store, metrics and samples there, a relative data.path would not be found.
    return validate_launch(resolve_paths(to_typed(node)))


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
    for name, margin in margins(cfg.sweep).items():
        if margin <= 0:
            raise ConfigError(f"sweep.margin.{name}={margin!r}: must be > 0 (null = no equivalence test)")
        if name not in {c.request for c in columns}:
            raise ConfigError(f"sweep.margin.{name}: {name} is not compared (sweep.metrics={list(cfg.sweep.metrics)})")
    return columns


def margins(axes: SweepAxes) -> dict[str, float]:
    """The equivalence margins set (by registry name)."""
    return {k: float(v) for k, v in (axes.margin or {}).items() if v is not None}


def measured_spreads(axes: SweepAxes, path: Path = SPREADS) -> tuple[str, dict[str, float]]:
    """The spreads (standard deviations of the paired differences, by column key) measured for
    this sweep's preset (sweep.spreads, else its name) and where they were measured."""
    preset = axes.spreads or axes.name
    found = json.loads(path.read_text()).get(preset) if path.is_file() else None
    return (found["measured"], found["sd"]) if found else ("", {})


def power_lines(cfg: SweepConfig, columns: list[Column]) -> list[str]:
    """Before training: per compared column, the smallest true difference the sweep detects with
    80% power, from the measured spread of the paired differences. The level is Holm's strictest
    step, 0.05 over the comparisons (arms x columns): what a lone real difference must pass."""
    arms = sum(len(v) - 1 for v in axis_values(cfg.sweep).values())
    m = arms * len(columns)
    if m == 0:
        return []
    source, sd = measured_spreads(cfg.sweep)
    auto = sequential(cfg.sweep)
    looks = cfg.sweep.max_rounds if auto else 1
    n_first = cfg.sweep.seeds_per_round if auto else len(cfg.sweep.seeds)

    def level(look: int) -> float:
        return significance.look_level(look, looks, kind=cfg.sweep.spending) / m

    plan = (f"rounds of {n_first} seeds, at most {looks} (level of round 1 {level(1):.2g}, of round {looks} "
            f"{level(looks):.2g}: {cfg.sweep.spending.value} spending of 0.05 over the rounds, Holm over {m})"
            if auto else f"{n_first} seeds, level 0.05/{m} (Holm's strictest step over {m} comparisons)")
    lines = [f"  power ({significance.POWER:.0%}, paired t, {plan}); spreads of the paired differences "
             + (f"measured {source} (sweeps/spreads.json):" if source else
                f"unknown for sweep {cfg.sweep.spreads or cfg.sweep.name} (sweeps/spreads.json): the report gives "
                "the seeds each open comparison needs")]  # fmt: skip
    if n_first < 2:
        return lines[:1] + [f"    nothing is detectable with {n_first} seed: a paired comparison needs 2 or more"]
    for c in columns:
        s = sd.get(c.key)
        d1 = significance.detectable(n_first, level(1))
        if s is None:
            lines.append(f"    {c.key}: detectable from {d1:.3g} standard deviations of its paired differences "
                         f"with {n_first} seeds (spread not measured)")
            continue
        text = f"    {c.key}: detectable from {d1 * s:.4g} ({d1:.3g} x sd {s:.4g}) with {n_first} seeds"
        if auto:
            dk = significance.detectable(n_first * looks, level(looks))
            text += f", from {dk * s:.4g} after {looks} rounds ({n_first * looks} seeds)"
        lines.append(text)
    return lines


def opening(cfg: SweepConfig, grid: list[dict], columns: list[Column], concurrent: int) -> list[str]:
    """What the sweep says before it starts: the question, the trials and the expected time."""
    values = axis_values(cfg.sweep)
    arms = [f"{axis}={', '.join(map(str, v[1:]))} against {axis}={v[0]} ({AXES[axis].question})"
            for axis, v in values.items() if len(v) > 1]  # fmt: skip
    fixed = ", ".join(f"{axis}={v[0]}" for axis, v in values.items() if len(v) == 1)
    lines = [f"sweep {cfg.sweep.name}: " + ("; ".join(arms) if arms else "one configuration, no arm to compare")
             + (f"; fixed: {fixed}" if fixed else ""),
             f"  {len(grid)} trials ({cfg.sweep.design.value}, seeds {seeds_said(cfg.sweep)} shared by every arm, "
             f"{cfg.train.total_kimg:g} kimg each), compared at the end of training on "
             + ", ".join(f"{c.label} ({c.key}, {c.better.value} is better)" for c in columns)
             + f" from {cfg.train.metric_samples} generated images"]  # fmt: skip
    if cfg.train.metric_samples < 1024:
        lines.append(f"  note: train.metric_samples={cfg.train.metric_samples} is below 1024: the metrics are "
                     "noisier than a comparison should rely on")
    if cfg.sweep.minutes_per_trial > 0 and not measured_model(cfg):
        lines.append(f"  expected time: unknown for this model (sweep.minutes_per_trial was measured with model=tiny); "
                     f"known after the first trial ({concurrent} at a time)")
    elif cfg.sweep.minutes_per_trial > 0:
        total = cfg.sweep.minutes_per_trial * math.ceil(len(grid) / concurrent)
        lines.append(f"  expected time: about {total:.0f} min ({len(grid)} trials of about "
                     f"{cfg.sweep.minutes_per_trial:g} min, {concurrent} at a time; sweep.minutes_per_trial was "
                     "measured on 2 CPU cores: the ETA below follows this machine's own trials)")
    else:
        lines.append(f"  expected time: known after the first trial ({concurrent} at a time)")
    return lines + power_lines(cfg, columns)


def seeds_said(axes: SweepAxes) -> str:
    if not sequential(axes):
        return str(list(axes.seeds))
    budget = f", within {axes.budget_minutes:g} min" if axes.budget_minutes else ""
    return (f"{round_seeds(axes, 1)} in round 1, then {axes.seeds_per_round} new seeds a round for the comparisons "
            f"still open, at most {axes.max_rounds} rounds{budget}")


def measured_model(cfg: SweepConfig) -> bool:
    """Whether the trials train the model the sweeps' minutes were measured with (the tiny preset;
    the camera mode, an axis, aside)."""
    def shape(model) -> dict:
        return {k: v for k, v in to_dict(model).items() if k != "camera_mode"}

    return shape(cfg.model) == shape(presets()["tiny"].model)


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
    from orchestration.tracking import Tracker

    config = config["trial"]  # the grid-searched entry of the param space
    cfg: LaunchConfig = to_typed(config["launch"])
    plan = resolve(cfg)
    plan.storage_path = config["storage_path"]
    plan.data_notices = config.get("data_notices", [])
    plan.data_checked = config.get("data_checked", False)
    # Tune may start a trial again after an interruption when its experiment state was saved
    # before the trial ended: a trial whose run finished reports that run's final metrics and
    # trains nothing (its MLflow run stays closed).
    tracker = Tracker(plan.tracking_uri, cfg.tracking.experiment, plan.name, plan.artifact_root)
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
    returned = WorkerResult.read(result.return_value)
    if returned.data_error:
        from cgsgan.data.dataset import DataError

        raise DataError(returned.data_error)
    if returned.storage_outage:
        raise RuntimeError(returned.storage_outage)


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
        resolve_index_list(resolve_paths(cfg), say=cluster.say)  # once, for every trial
        check_question(cfg, Path(cfg.output_dir) / "sweeps" / cfg.sweep.name)  # a new grid is not this sweep
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

    from orchestration.tracking import Tracker

    storage = f"{base_plan.storage_path}/{cfg.sweep.name}"
    tracker = Tracker(base_plan.tracking_uri, cfg.tracking.experiment, f"sweep-{cfg.sweep.name}",
                      base_plan.artifact_root)
    parent = tracker.start(params={"sweep": to_dict(cfg.sweep)}, tags={"cgsgan.sweep": cfg.sweep.name})
    view = share_view(tracker, cfg.sweep, columns)

    cluster.connect_ray(cfg, extra_cpus=1)  # room for the trial drivers (0.01 CPU each) beside the workers
    concurrent = max_concurrent(cfg)
    print("\n".join(opening(cfg, grid, columns, concurrent)) + f"\n  MLflow parent run {parent}", flush=True)
    common = {"storage_path": storage, "parent_run_id": parent, "sweep": cfg.sweep.name,
              "data_notices": base_plan.data_notices, "data_checked": base_plan.data_checked}  # fmt: skip
    from ray import tune

    if not tune.Tuner.can_restore(str(Path(base_plan.output_dir) / "tune" / cfg.sweep.name)):
        # A new sweep records its question; one started before questions were recorded resumes as it was.
        record_question(cfg, Path(base_plan.output_dir) / "sweeps" / cfg.sweep.name)
    axes, margin = axis_values(cfg.sweep), margins(cfg.sweep)
    if not sequential(cfg.sweep):
        rows = tune_round(cfg, grid, trial_cfgs, common, base_plan.output_dir, cfg.sweep.name, concurrent, columns)[0]
        differences, rounds = None, ""
    else:
        rows, differences, rounds = run_rounds(cfg, grid, trial_cfgs, common, base_plan.output_dir, concurrent,
                                               columns, tracker)  # fmt: skip
    out = Path(base_plan.output_dir) / "sweeps" / cfg.sweep.name
    files = write_report(rows, axes, out, columns, margin, differences, rounds)
    for f in files:
        tracker.log_artifact(f, "comparison")
    log_tables(tracker, rows, axes, columns, margin, differences)
    tracker.finish("FINISHED" if all(not r["error"] for r in rows) else "FAILED")
    print((out / "comparison.md").read_text())
    print(f"table: {files[0]}\nplot: {files[2]}")
    server = base_plan.tracking_uri if base_plan.tracking_server else "http://127.0.0.1:5000"
    if not base_plan.tracking_server:
        print(f"MLflow: mlflow ui --backend-store-uri {base_plan.tracking_uri}, then open")
    print(f"the trials in MLflow: {server.rstrip('/')}/{view}")
    ray.shutdown()
    return 0 if all(not r["error"] for r in rows) else 1


def tune_round(cfg: SweepConfig, grid: list[dict], trial_cfgs: list[LaunchConfig], common: dict, output_dir: str,
               tune_name: str, concurrent: int, columns: list[Column]) -> tuple[list[dict], list[float]]:
    """One Ray Tune experiment over `grid` (resumed where it was interrupted): the trials' rows
    and the minutes of those that trained."""
    from ray import tune

    from sweeps.progress import SweepProgress

    progress = SweepProgress(tune_name, len(grid), concurrent, REPLAYED,
                             key=lambda trial: trial_key(trial.config["trial"]["axes"]))
    space = [{"launch": to_dict(tc), "axes": t, **common} for t, tc in zip(grid, trial_cfgs)]
    trainable = tune.with_resources(run_trial, {"cpu": 0.01})
    tune_storage = str(Path(output_dir) / "tune")
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
    return rows, [d / 60 for d in progress.progress.durations]


ANSWERED = (Verdict.better, Verdict.worse, Verdict.equivalent)


def run_rounds(cfg: SweepConfig, grid: list[dict], trial_cfgs: list[LaunchConfig], common: dict, output_dir: str,
               concurrent: int, columns: list[Column], tracker) -> tuple[list[dict], list[Difference], str]:
    """sweep.seeds=auto: round after round of new seeds, each a Tune experiment of its own
    (<name>, <name>-round2, ...: the same command resumes any of them), for the configurations
    of the comparisons still open; after each round a look at every open comparison at that
    round's share of the error rate (sweeps/significance.py). Stops when none is open, after
    sweep.max_rounds, or before a round that would overrun sweep.budget_minutes. Returns every
    round's trials, the verdicts (each from the round that answered it) and what happened."""
    axes, margin, looks = axis_values(cfg.sweep), margins(cfg.sweep), cfg.sweep.max_rounds
    rows: list[dict] = []
    answered: dict[tuple, Difference] = {}
    minutes: list[float] = []
    t0, said = time.monotonic(), []
    differences: list[Difference] = []
    look = 0
    for look in range(1, looks + 1):
        if look > 1:
            open_arms = {(d.axis, d.arm) for d in differences if d.verdict not in ANSWERED}
            grid = round_trials(cfg.sweep, look, open_arms)
            per_trial = statistics.fmean(minutes) if minutes else cfg.sweep.minutes_per_trial
            need = per_trial * math.ceil(len(grid) / concurrent)
            spent = (time.monotonic() - t0) / 60
            if cfg.sweep.budget_minutes and spent + need > cfg.sweep.budget_minutes:
                said.append(f"round {look} ({len(grid)} trials, about {need:.0f} min) would overrun "
                            f"sweep.budget_minutes={cfg.sweep.budget_minutes:g} ({spent:.0f} min spent): stopped")
                print(f"sweep {cfg.sweep.name}: {said[-1]}", flush=True)
                look -= 1
                break
            trial_cfgs = [trial_config(cfg, t) for t in grid]
            print(f"sweep {cfg.sweep.name}: round {look}: seeds {round_seeds(cfg.sweep, look)} for "
                  f"{', '.join(f'{a}={v}' for a, v in sorted(open_arms))} ({len(grid)} trials)", flush=True)
        name = cfg.sweep.name if look == 1 else f"{cfg.sweep.name}-round{look}"
        new, took = tune_round(cfg, grid, trial_cfgs, common, output_dir, name, concurrent, columns)
        rows += new
        minutes += took
        level = significance.look_level(look, looks, kind=cfg.sweep.spending)
        differences = paired_differences(rows, axes, columns, margin, level, look, answered)
        answered.update({d.key: d for d in differences if d.verdict in ANSWERED and d.key not in answered})
        still = sum(d.verdict not in ANSWERED for d in differences)
        said.append(f"round {look}: level {level:.3g}, {len(answered)} answered, {still} open")
        print(f"sweep {cfg.sweep.name}: {said[-1]}", flush=True)
        tracker.log_metrics({"sweep/answered": len(answered), "sweep/open": still, "sweep/trials": len(rows)},
                            step=look, timestamp_ms=int(time.time() * 1000))  # fmt: skip
        if not still:
            break
    text = (f"Sequential (sweep.seeds=auto): {look} round(s) of {cfg.sweep.seeds_per_round} seeds, at most {looks}, "
            f"{cfg.sweep.spending.value} spending of {significance.ALPHA:g} over the rounds; each verdict from the round "
            "that answered it, Holm over the comparisons open at that round at its level: " + "; ".join(said) + ".")
    return rows, differences, text


def share_view(tracker, axes: SweepAxes, columns: list[Column]) -> str:
    """The sweep's view of the experiment's runs page: its trials with every axis, the seed and the
    headline metric as columns (the UI puts metric columns first and draws only the columns in
    sight: more metrics would push the axes out of view), grouped by the axes that vary (the
    table shows each configuration's mean over its seeds); its chart view opens on the headline
    metric, a bar a trial (the trial's name says its arm), then every trial's newest grid side by
    side (the newest 10: the UI's limit). Returns the page's path (in the UI's model-training layout)."""
    from orchestration.tracking import NEWEST_GRID_KEY, ChartSection, bar_chart, image_card_height, image_chart

    varying = [axis for axis, values in axis_values(axes).items() if len(values) > 1]
    headline = reported(columns[0])
    sections = [ChartSection(f"sweep {axes.name}: {columns[0].label} by trial", [bar_chart(headline)]),
                ChartSection(f"sweep {axes.name}: the newest grids", [image_chart(NEWEST_GRID_KEY)],
                             image_card_height(len(trials(axes))))]  # fmt: skip
    return tracker.share_view(f"sweep-{axes.name}", f"tags.sweep = '{axes.name}'", [*AXES, "seed"], [headline],
                              varying, sections)


def log_tables(tracker, rows: list[dict], axes: dict[str, list], columns: list[Column],
               margin: dict[str, float] | None = None, differences: list[Difference] | None = None) -> None:
    """The parent run's MLflow tables: one row per trial (its axes, metrics and verdict, as
    write_report set it) and the paired differences with their intervals and verdicts."""
    cols = trial_columns(list(AXES), columns, rows)
    tracker.log_table([{c: r.get(c) for c in cols} for r in sorted(rows, key=lambda r: r["trial"])],
                      "comparison/trials.json")
    table = differences_table(differences if differences is not None else paired_differences(rows, axes, columns, margin))
    if table:
        tracker.log_table(table, "comparison/differences.json")


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
