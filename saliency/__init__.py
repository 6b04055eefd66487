"""Saliency-map trustworthiness audits and trainable attention maps (Arun et al. 2020; Aggarwal et al. 2020).

Generic over any torch classifier; never imports ``pipelines``. ``methods`` (the eight methods),
``postprocess``, ``xrai``, ``cam``; the audit: ``protocol`` (presets), ``controls`` (model-blind
maps), ``criteria`` (AUPRC, SSIM, tests), ``randomization``, ``audit_maps``, ``audit_rows``,
``verdicts``, ``audit`` (the run), ``audit_report``; ``attention`` (the trainable gate) and
``localizer`` (the supervised baseline).

The entry points are importable from here (``from saliency import explain, run_audit``), each
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg.lazy import lazy_exports

__all__ = [
    "AttentionClassifier",
    "AttentionGate",
    "AuditConfig",
    "AuditData",
    "AuditModel",
    "AuditProtocol",
    "AuditResult",
    "Localizer",
    "LocalizerConfig",
    "METHODS",
    "MapBatch",
    "MethodSettings",
    "PROTOCOLS",
    "PostProcess",
    "XraiSettings",
    "attention_network",
    "auprc",
    "boxes_to_mask",
    "cascading_randomization",
    "control_maps",
    "explain",
    "get_protocol",
    "load_localizer",
    "localizer_maps",
    "method_settings",
    "run_audit",
    "save_localizer",
    "ssim",
    "train_localizer",
    "xrai_map",
]

#: Public name -> the module it comes from, imported when the name is first used (PEP 562).
_EXPORTS: dict[str, str] = {
    "METHODS": "saliency.methods",
    "MapBatch": "saliency.methods",
    "MethodSettings": "saliency.methods",
    "explain": "saliency.methods",
    "method_settings": "saliency.methods",
    "PostProcess": "saliency.postprocess",
    "XraiSettings": "saliency.xrai",
    "xrai_map": "saliency.xrai",
    "control_maps": "saliency.controls",
    "auprc": "saliency.criteria",
    "boxes_to_mask": "saliency.criteria",
    "ssim": "saliency.criteria",
    "cascading_randomization": "saliency.randomization",
    "PROTOCOLS": "saliency.protocol",
    "AuditProtocol": "saliency.protocol",
    "get_protocol": "saliency.protocol",
    "AuditConfig": "saliency.audit",
    "AuditData": "saliency.audit",
    "AuditModel": "saliency.audit",
    "AuditResult": "saliency.audit",
    "run_audit": "saliency.audit",
    "AttentionClassifier": "saliency.attention",
    "AttentionGate": "saliency.attention",
    "attention_network": "saliency.attention",
    "Localizer": "saliency.localizer",
    "LocalizerConfig": "saliency.localizer",
    "load_localizer": "saliency.localizer",
    "localizer_maps": "saliency.localizer",
    "save_localizer": "saliency.localizer",
    "train_localizer": "saliency.localizer",
}

if TYPE_CHECKING:
    from saliency.attention import AttentionClassifier, AttentionGate, attention_network
    from saliency.audit import AuditConfig, AuditData, AuditModel, AuditResult, run_audit
    from saliency.controls import control_maps
    from saliency.criteria import auprc, boxes_to_mask, ssim
    from saliency.localizer import (
        Localizer,
        LocalizerConfig,
        load_localizer,
        localizer_maps,
        save_localizer,
        train_localizer,
    )
    from saliency.methods import METHODS, MapBatch, MethodSettings, explain, method_settings
    from saliency.postprocess import PostProcess
    from saliency.protocol import PROTOCOLS, AuditProtocol, get_protocol
    from saliency.randomization import cascading_randomization
    from saliency.xrai import XraiSettings, xrai_map


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
