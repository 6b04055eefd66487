"""Seeding and RNG state: per-epoch seeds, and the Python/NumPy/torch states a checkpoint carries.

Every epoch re-seeds all RNGs from :func:`epoch_seed` ``(seed, epoch, rank)``, so epoch ``e``
computes the same thing whether the run started at epoch 1 or resumed at ``e``.
:func:`rng_state` and :func:`set_rng_state` save and restore the global states as values that
``torch.load(weights_only=True)`` reads (tensors, lists, ints).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch

__all__ = ["epoch_seed", "rng_state", "seed_all", "set_rng_state"]


def epoch_seed(seed: int, epoch: int, process_rank: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, process_rank]).generate_state(1, dtype=np.uint32)[0])


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (torch's on every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights_only-loadable values (tensors, lists, ints)."""
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only on as many devices as saved)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np.asarray(np_state["keys"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
