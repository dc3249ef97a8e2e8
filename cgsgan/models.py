"""Building the networks from the model config: the one place that decodes the camera mode.

    d_projection   G camera-free (its label input zeroed), D projects onto the camera embedding
    d_none         G camera-free, D without any camera
    g_conditioned  G's mapping takes the camera label, D projects as in d_projection
"""

from __future__ import annotations

from cgsgan.config import CameraMode, ModelConfig
from cgsgan.discriminator import Discriminator
from cgsgan.generator import Generator


def build_generator(m: ModelConfig) -> Generator:
    return Generator(m.generator, m.resolution, camera_conditioned=m.camera_mode == CameraMode.g_conditioned)


def build_discriminator(m: ModelConfig) -> Discriminator:
    return Discriminator(m.discriminator, m.resolution, use_camera=m.camera_mode != CameraMode.d_none)


def build_models(m: ModelConfig) -> tuple[Generator, Discriminator]:
    """(G, D) for this model config, freshly initialised from the current torch seed (G first)."""
    G = build_generator(m)
    return G, build_discriminator(m)
