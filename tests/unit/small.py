"""The small trainer config the unit tests share: the tiny model cut down further (32 points,
2 levels, 2 views, batch 4) on a dataset folder, with R1 every 2 steps so short runs exercise it,
and FD on random features so no test trains the synthetic-heads extractor."""

from __future__ import annotations

from cgsgan import config


def small_config(data_dir, batch_size: int = 4) -> config.CGSGANConfig:
    cfg = config.tiny()
    cfg.data.source, cfg.data.path = "folder", str(data_dir)
    cfg.model.generator.num_points = 32
    cfg.model.generator.num_levels = 2
    cfg.loss.knn_k = 4
    cfg.loss.num_views = 2
    cfg.loss.r1_interval = 2  # the lazy R1 step runs within a few steps (steps 0, 2, ...)
    cfg.train.batch_size = batch_size
    cfg.train.metric_samples = 16
    cfg.train.feature_extractor = "random"
    return cfg
