"""The ablation axes: the settings a sweep varies and every run is searched by, in one table.

A sweep (sweeps/ablate.py) builds its grid, trial keys and opening question from AXIS_TABLE; a
run's MLflow params (orchestration/run_params.py) are these axes and the seed, named alike, so a
plain launch and a sweep's trial are searched the same way (`params.camera_mode = 'd_none'`).
Adding an axis is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgsgan.config import Background, CameraMode


@dataclass(frozen=True)
class Axis:
    """One sweep axis: sweep.<name> lists its values (the first is the reference arm)."""

    name: str
    key: str  # the config key its values set
    tag: str  # its prefix in trial keys (v4-avg1-d_projection-bgrandom-s0)
    question: str  # what comparing its arms asks (the sweep's opening line)
    type: type  # of its values
    default: tuple  # its values when the command line and the sweep group name none


# The axes, in trial-key order. The sweep's SweepAxes gets a list per row.
AXIS_TABLE = (
    Axis("views", "loss.num_views", "v", "how many views of each head the discriminator sees per step", int, (4,)),
    Axis("grad_averaging", "loss.grad_averaging", "avg",
         "averaging the generator's gradients over the views of a head", bool, (True,)),
    Axis("camera_mode", "model.camera_mode", "",
         "where the camera goes in (discriminator projection, none, or the generator)", CameraMode,
         (CameraMode.d_projection, CameraMode.d_none, CameraMode.g_conditioned)),
    Axis("background", "loss.background", "bg", "the background colour behind rendered and real heads", Background,
         (Background.random,)),
)  # fmt: skip
AXES = {a.name: a for a in AXIS_TABLE}
SEED = ("train.seed", "s")  # (config key, trial-key tag): repeats every configuration of a sweep
