"""Seeded initialisation that leaves the process-wide random generators alone.

A server runs many users' work in one process: if a training reseeded torch's, numpy's or
Python's global generator, every later draw from it would be predictable, and every user's
"random" values the same. Trainings draw from their own `torch.Generator` instead, including
for the initial weights: `build_seeded` builds a module on the meta device (its constructor
draws nothing) and then gives it torch's default initialisation from a private generator.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def build_seeded(factory: Callable[[], M], generator: torch.Generator) -> M:
    """`factory()`'s module on the CPU, initialised as torch initialises it by default but
    with draws from `generator`; the global generators are neither read nor reseeded.

    Conv and linear layers get torch's kaiming-uniform weights and uniform biases, norm
    layers ones and zeros. A module that initialises something its own way (a buffer, a
    zeroed head) defines `reset_private_(generator)`, called afterwards; any other layer
    type with parameters is a programming error, refused rather than left uninitialised.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
                # torch's default: kaiming_uniform_(a=sqrt(5)); bias U(-1/sqrt(fan_in), ...)
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.weight[0].numel())
                    m.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, nn.GroupNorm | nn.LayerNorm | nn.BatchNorm2d):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
            elif any(True for _ in m.parameters(recurse=False)) and \
                    not hasattr(m, "reset_private_"):
                raise TypeError(f"build_seeded cannot initialise a {type(m).__name__}")
        for m in module.modules():
            reset = getattr(m, "reset_private_", None)
            if reset is not None:
                reset(generator)
    return module


@contextlib.contextmanager
def global_draws_from(seed: int) -> Iterator[None]:
    """For constructors that draw from torch's global CPU generator in their own ways
    (StyleGAN2's layers call torch.randn): inside the block those draws follow `seed`, and
    on leaving it the global generator is back exactly as it was, as if never used.

    Nothing else in this project draws from the global generator (renders, trainings, the
    seed button and the readers use their own), so the seed cannot leak into anyone's
    numbers; prefer `build_seeded` for modules made of torch's standard layers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
