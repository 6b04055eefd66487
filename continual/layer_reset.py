"""Where did the model forget? Layer-reset attribution of forgetting.

The layer-reset experiment of Ramasesh, Dyer & Raghu ("Anatomy of catastrophic forgetting: hidden
representations and task semantics", ICLR 2021): take the adapted model (site B), put one group of
consecutive layers back to the old model's values (site A) and measure both sites again. A group
whose reset restores the old site is where the forgetting is; if the same reset also undoes the new
site, that is where the adaptation is, and the two sites compete for those layers.

Groups are contiguous runs of the modules that own parameters or buffers, in registration order
(input to output for the usual ``features`` -> ``classifier`` networks), split into ``n_groups``
runs of near-equal module count; a reset restores parameters and buffers (BN running statistics
included) of the group's modules. Generic over any ``torch.nn.Module``; the caller supplies
``evaluate(model) -> {name: value}``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["depth_groups", "reset_attribution"]


def _stateful_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False))
    ]


def depth_groups(model: torch.nn.Module, n_groups: int = 4) -> list[dict[str, Any]]:
    """Split ``model``'s stateful modules into ``n_groups`` contiguous depth groups.

    Returns:
        One dict per group, input side first: ``group`` (``"depth 1/4"``, ...), ``first`` and
        ``last`` (module names), ``n_modules``, ``n_params`` (parameter elements) and ``keys`` (the
        ``state_dict`` keys the group covers). The groups partition the ``state_dict``.

    Raises:
        ValueError: ``n_groups`` < 1 or more groups than stateful modules.
    """
    modules = _stateful_modules(model)
    in_state = set(model.state_dict())
    if n_groups < 1 or n_groups > len(modules):
        raise ValueError(f"n_groups must be in [1, {len(modules)}] for this model, got {n_groups}")
    bounds = [round(i * len(modules) / n_groups) for i in range(n_groups + 1)]
    groups = []
    for g in range(n_groups):
        part = modules[bounds[g] : bounds[g + 1]]
        own = [
            f"{name}.{key}" if name else key
            for name, module in part
            for key, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        ]
        keys = [key for key in own if key in in_state]  # non-persistent buffers are not state
        groups.append(
            {
                "group": f"depth {g + 1}/{n_groups}",
                "first": part[0][0],
                "last": part[-1][0],
                "n_modules": len(part),
                "n_params": sum(p.numel() for _, m in part for p in m.parameters(recurse=False)),
                "keys": keys,
            }
        )
    return groups


def reset_attribution(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]],
    *,
    n_groups: int = 4,
) -> list[dict[str, Any]]:
    """Evaluate ``model_b`` with each depth group reset to ``model_a`` (neither model is modified).

    Args:
        model_a: the old model (same architecture as ``model_b``).
        model_b: the adapted model.
        evaluate: ``model -> {metric: value}``, e.g. linear kappa on each site's test set.
        n_groups: number of depth groups (:func:`depth_groups`).

    Returns:
        Rows ``{"group", "first", "last", "n_modules", "n_params", **evaluate(...)}``: first
        ``"none"`` (``model_b`` as it is), then each depth group reset, then ``"all"`` (every
        group reset, i.e. ``model_a``'s state).

    Raises:
        ValueError: the two models' ``state_dict`` keys or shapes differ, or a bad ``n_groups``.
    """
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if list(state_a) != list(state_b) or any(state_a[k].shape != state_b[k].shape for k in state_a):
        raise ValueError("model_a and model_b must have the same architecture (state_dict keys and shapes)")
    groups = depth_groups(model_b, n_groups)
    every = {
        "group": "all",
        "first": groups[0]["first"],
        "last": groups[-1]["last"],
        "n_modules": sum(g["n_modules"] for g in groups),
        "n_params": sum(p.numel() for p in model_b.parameters()),
        "keys": list(state_b),
    }
    nothing = {"group": "none", "first": "", "last": "", "n_modules": 0, "n_params": 0, "keys": []}
    probe = copy.deepcopy(model_b)
    rows = []
    for entry in (nothing, *groups, every):
        reset = set(entry["keys"])
        probe.load_state_dict({k: (state_a if k in reset else state_b)[k].clone() for k in state_b})
        probe.eval()
        rows.append({k: v for k, v in entry.items() if k != "keys"} | dict(evaluate(probe)))
    return rows
