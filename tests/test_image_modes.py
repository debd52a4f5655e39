"""Colour conversion: every image mode a folder may hold becomes uint8 RGB."""

import numpy as np
import pytest
import torch
from PIL import Image

import tlcore
from tlcore.data import to_rgb
from tlcore.errors import ConfigError
from tlcore.train import fit


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "I", "F", "LA", "CMYK", "1"])
def test_every_mode_becomes_uint8_rgb(mode):
    gradient = np.linspace(0, 1, 12 * 10).reshape(10, 12)
    if mode == "I;16":  # 16-bit greyscale, as PNG scanners write it
        image = Image.frombytes("I;16", (12, 10), (gradient * 60000).astype("<u2").tobytes())
    elif mode == "I":
        image = Image.fromarray((gradient * 60000).astype(np.int32))
    elif mode == "F":
        image = Image.fromarray(gradient.astype(np.float32), mode="F")
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8), mode="L").convert(mode)
    rgb = to_rgb(image)
    assert rgb.dtype == torch.uint8 and tuple(rgb.shape) == (3, 10, 12)
    if mode in ("I;16", "I", "F"):  # high-bit-depth images are scaled by their depth, not saturated to white
        top = 255 if mode == "F" else round(60000 / 257)  # floats are 0..1; integers 16-bit, never stretched
        assert rgb.min() == 0 and rgb.max() == top and len(rgb.unique()) > 50


def test_grey_tensors_are_expanded():
    assert tuple(to_rgb(torch.zeros(1, 4, 4, dtype=torch.uint8)).shape) == (3, 4, 4)
    assert tuple(to_rgb(torch.zeros(4, 4, dtype=torch.uint8)).shape) == (3, 4, 4)


def test_a_run_where_nothing_trains_is_refused(host, tiny_config):
    class EmptyHead(torch.nn.Module):
        def forward(self, x):
            return x[:, :2]

    class EmptyHeadPlugin:
        @tlcore.hookimpl
        def tlcore_register_heads(self, register):
            register("test:empty", lambda in_features, num_classes, options: EmptyHead())

    host.register(EmptyHeadPlugin(), "empty")
    with pytest.raises(ConfigError, match="nothing would train in epoch 1: head 'test:empty' has no trainable"):
        fit(tiny_config(head="test:empty", freeze="backbone"), host)
