"""Continual and federated learning across institutions: EWC with batch-norm statistics
(Gupta et al. 2020/2021) and federated training (Roth et al. 2020). Generic over any classifier
with BN layers; never imports ``pipelines``.

Modules: :mod:`continual.bn` (BN statistics snapshot, freezing, BN-affine training,
post-conditions), :mod:`continual.ewc` (Fisher diagonal at the old site, EWC penalty),
:mod:`continual.lwf` (Learning without Forgetting), :mod:`continual.metrics` (forgetting
metrics), :mod:`continual.expansion` (the arms of a domain-expansion experiment).

The entry points are importable from here (``from continual import EWCPenalty, estimate_fisher,
freeze_bn_stats``), each imported on first use, the domain-expansion driver
(:func:`continual.expansion.expand`) and the federated simulation among them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg.lazy import lazy_exports

__all__ = [
    "ARMS",
    "AccuracyMatrix",
    "ArmSpec",
    "BNFreezeHandle",
    "EWCPenalty",
    "FISHER_MODES",
    "FedConfig",
    "Fisher",
    "LwFLoss",
    "SELECTIONS",
    "ServerState",
    "Site",
    "adapt_bn_statistics",
    "aggregate_states",
    "bn_modules",
    "check_postconditions",
    "client_update",
    "distillation_loss",
    "estimate_fisher",
    "expand",
    "ewc_penalty",
    "forgetting_reduction",
    "freeze_bn_stats",
    "recompute_bn_stats",
    "set_trainable",
    "simulate_inprocess",
    "site_metrics",
    "snapshot_bn_stats",
    "snapshot_params",
    "summarize_arms",
]

#: Public name -> the module it comes from, imported when the name is first used (PEP 562).
_EXPORTS: dict[str, str] = {
    "BNFreezeHandle": "continual.bn",
    "bn_modules": "continual.bn",
    "check_postconditions": "continual.bn",
    "freeze_bn_stats": "continual.bn",
    "recompute_bn_stats": "continual.bn",
    "set_trainable": "continual.bn",
    "snapshot_bn_stats": "continual.bn",
    "snapshot_params": "continual.bn",
    "FISHER_MODES": "continual.ewc",
    "EWCPenalty": "continual.ewc",
    "Fisher": "continual.ewc",
    "estimate_fisher": "continual.ewc",
    "ewc_penalty": "continual.ewc",
    "LwFLoss": "continual.lwf",
    "distillation_loss": "continual.lwf",
    "ARMS": "continual.expansion",
    "SELECTIONS": "continual.expansion",
    "ArmSpec": "continual.expansion",
    "expand": "continual.expansion",
    "AccuracyMatrix": "continual.metrics",
    "forgetting_reduction": "continual.metrics",
    "site_metrics": "continual.metrics",
    "summarize_arms": "continual.metrics",
    "FedConfig": "continual.federated",
    "ServerState": "continual.federated",
    "Site": "continual.federated",
    "aggregate_states": "continual.federated",
    "client_update": "continual.federated",
    "simulate_inprocess": "continual.federated",
    "adapt_bn_statistics": "continual.crosssite",
}

if TYPE_CHECKING:
    from continual.bn import (
        BNFreezeHandle,
        bn_modules,
        check_postconditions,
        freeze_bn_stats,
        recompute_bn_stats,
        set_trainable,
        snapshot_bn_stats,
        snapshot_params,
    )
    from continual.crosssite import adapt_bn_statistics
    from continual.ewc import FISHER_MODES, EWCPenalty, Fisher, estimate_fisher, ewc_penalty
    from continual.expansion import ARMS, SELECTIONS, ArmSpec, expand
    from continual.federated import FedConfig, ServerState, Site, aggregate_states, client_update, simulate_inprocess
    from continual.lwf import LwFLoss, distillation_loss
    from continual.metrics import AccuracyMatrix, forgetting_reduction, site_metrics, summarize_arms


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
