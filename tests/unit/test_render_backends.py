"""The renderer and the config agree on the backends: one list (RenderBackend), plus the test oracle."""

import pytest
import torch

from cgsgan.config import RenderBackend
from cgsgan.render import BACKENDS, resolve_backend


def test_the_renderer_takes_every_configurable_backend_and_the_oracle():
    assert set(BACKENDS) == {b.value for b in RenderBackend} | {"dense"}
    cpu = torch.device("cpu")
    assert resolve_backend(RenderBackend.auto, cpu) in ("native", "torch") and resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("dense", cpu) == "dense"


def test_an_unknown_backend_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'opengl'.*\['auto', 'gsplat', 'native', 'torch', 'dense'\]"):
        resolve_backend("opengl", torch.device("cpu"))
