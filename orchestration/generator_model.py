"""The EMA generator as an MLflow pyfunc model (MLflow's "models from code": this file is copied
into the logged model and run when it is loaded; no pickled code).

Input: a table with a row per image, columns `seed` (int: the latent z, as `cgsgan.generate`
draws it) and `yaw` (float, degrees; 0 = frontal, positive turns the head; pitch 0).
Output: the images, uint8 [N, H, W, 3], rendered with the run's truncation (train.truncation_psi).
The model's one artifact, `checkpoint`, is a generator-only cgsgan checkpoint
(checkpoint-<nimg>.pt: config and EMA weights), which `python -m cgsgan.generate --checkpoint`
also reads from the downloaded model folder.
"""

from __future__ import annotations

import math

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model

from cgsgan import camera
from cgsgan.generate import latents
from cgsgan.training.checkpoint import load_generator
from cgsgan.training.samples import render_views, to_uint8


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.G, self.cfg = load_generator(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        """model_input: a pandas DataFrame (seed, yaw) -> images uint8 [N, H, W, 3]."""
        seeds = [int(s) for s in model_input["seed"]]
        yaws = torch.tensor([math.radians(float(y)) for y in model_input["yaw"]])
        labels = camera.make_label(camera.pose_from_angles(yaws, torch.zeros(len(seeds))),
                                   camera.intrinsics(batch=len(seeds)))  # [N, 25]
        z = latents(seeds, self.cfg.model.generator.z_dim)  # [N, z_dim]
        res, psi = self.cfg.model.resolution, self.cfg.train.truncation_psi
        images = [render_views(self.G, z[i : i + 1], labels[i : i + 1], res, psi)[0] for i in range(len(seeds))]
        return to_uint8(torch.cat(images))  # [N, 3, H, W] -> [N, H, W, 3]


set_model(GeneratorModel())
