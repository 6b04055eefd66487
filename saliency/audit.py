"""The saliency trust audit: eight methods and two controls, four criteria, their baselines, one report.

The protocol of Arun et al. 2020 (Radiology: AI 2021, "Assessing the trustworthiness of saliency
maps for localizing abnormalities in medical imaging") over any torch classifier and any set of
images with ground-truth masks. The rules of each criterion come from a preset,
:mod:`saliency.protocol` (``paper``, the default, or ``calibrated``):

1. **Localization utility**: per-image AUPRC of each map against the mask, for the trained model,
   an untrained model of the same architecture (informative), the average-mask prior and
   (optional) a supervised localizer's maps (informative).
2. **Randomization sensitivity**: cascading top-down re-initialization of the network's named
   blocks (:mod:`saliency.randomization`; the stem stays trained unless ``include_stem``), for
   each replicate of the audited architecture; per state the SSIM between each image's map and
   its map under that replicate. Baseline: the inter-image SSIM (maps of different images under
   the same replicate).
3. **Repeatability**: SSIM between the maps of every pair of replicates (same architecture,
   different seeds).
4. **Reproducibility**: the same between the trained model and another architecture.

Two model-independent controls (:mod:`saliency.controls`: an edge detector and the input itself)
are judged beside the methods by the same rules; a criterion that a control passes is marked
not discriminating on this setting. Degenerate maps (constant or not finite) are kept in every
table with their flag and counted in the summary; their scores are NaN. Maps are cached per
(model weights, method, settings, images) under ``OUT/cache``, so an interrupted audit resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg.progress import progress_bar
from medimg.writers import write_csv, write_json
from saliency.audit_maps import ATTENTION, ATTENTION_READOUT, MapCache, MapExecutor, MapJob, has_attention
from saliency.audit_result import AuditResult
from saliency.protocol import AuditProtocol, get_protocol
from saliency.verdicts import (
    INFORMATIVE,
    SUMMARY_COLUMNS,
    RandomizationScores,
    SummaryRow,
    finite_mean,
    is_informative,
    method_label,
)

__all__ = [
    "CRITERIA",
    "REPLICA",
    "AuditConfig",
    "AuditData",
    "AuditModel",
    "AuditResult",
    "run_audit",
]

CRITERIA: tuple[str, ...] = ("localization", "randomization", "repeatability", "reproducibility")
#: Role-name prefix of the replicates of the audited architecture (``replica1``, ``replica2``, ...).
REPLICA = "replica"


@dataclass
class AuditModel:
    """One network in the audit.

    Attributes:
        name: its role: ``"trained"``, ``"replica1"``, ``"replica2"``, ... (same architecture, other
            seeds), ``"other"`` (another architecture), ``"untrained"`` (fresh initialization) or
            ``"variant:LABEL"`` (another model scored for localization only).
        model: the classifier (never modified: methods and randomization work on copies).
        architecture: its architecture name (reported).
        layer: Grad-CAM layer name (None: the methods' automatic choice).
        source: where the weights came from (a path, "trained here", "random init, seed 0").
    """

    name: str
    model: torch.nn.Module
    architecture: str
    layer: str | None = None
    source: str = ""


@dataclass
class AuditData:
    """The images explained and their ground truth, all on the network's input grid.

    Attributes:
        ids: one identifier per image.
        images: ``(N, C, *spatial)`` float32 preprocessed network inputs.
        masks: ``(N, *spatial)`` bool ground-truth regions (None: no localization criterion).
        labels: ``(N,)`` ground-truth classes (reported beside the explained class), or None.
        prior: the average-mask prior ``(*spatial)``; None = leave-one-out over ``masks`` (image
            i's prior is the mean of the other images' masks).
        prior_source: how the prior was made (reported).
        localizer: ``(N, *spatial)`` maps of a supervised localizer (optional baseline).
        localizer_replica: the maps of a second localizer trained with another seed: their SSIM
            with ``localizer`` is the repeatability baseline (informative).
        to_display: maps an array on the network grid to viewing orientation (e.g. a transpose
            for MONAI's (X, Y) grid); identity by default.
        description: what the images are (reported).
    """

    ids: list[str]
    images: torch.Tensor
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None
    prior: np.ndarray | None = None
    prior_source: str = ""
    localizer: np.ndarray | None = None
    localizer_replica: np.ndarray | None = None
    to_display: Callable[[np.ndarray], np.ndarray] | None = None
    description: str = ""

    def display(self, array: np.ndarray) -> np.ndarray:
        return self.to_display(array) if self.to_display is not None else array


@dataclass(frozen=True)
class AuditConfig:
    """Settings of an audit (all recorded in the report and ``settings.json``).

    Attributes:
        methods: saliency methods (:data:`saliency.methods.METHODS`, or ``"attention"``); empty:
            all eight (plus the attention of a gated model).
        criteria: criteria to run (:data:`CRITERIA`).
        preset: the protocol, ``"paper"`` or ``"calibrated"`` (:mod:`saliency.protocol`): SSIM
            data range, statistics, pass rules, replicates and prior, together.
        method_preset: the methods' settings, ``"paper"`` (the paper code's) or ``"captum"``.
        include_stem: the last randomization state re-initializes the stem too (a fully random
            network); the paper never randomizes it.
        pairs_per_image: random partners per image for the inter-image SSIM baseline.
        seed: seeds the noise of SmoothGrad, the randomization and the baseline pairs.
        alpha: significance level after Holm correction.
        batch_size: images x samples per forward/backward chunk.
        examples: images shown in the overlay figure.
    """

    methods: tuple[str, ...] = ()
    criteria: tuple[str, ...] = CRITERIA
    preset: str = "paper"
    method_preset: str = "paper"
    include_stem: bool = False
    pairs_per_image: int = 50
    seed: int = 0
    alpha: float = 0.05
    batch_size: int = 32
    examples: int = 3

    @property
    def protocol(self) -> AuditProtocol:
        return get_protocol(self.preset)

    def resolved_methods(self, spatial_dims: int) -> tuple[list[str], list[str]]:
        """(methods to run, methods skipped because they do not extend to ``spatial_dims``)."""
        from saliency.methods import METHODS, supports_3d

        chosen = list(self.methods or METHODS)
        unknown = [m for m in chosen if m not in (*METHODS, ATTENTION)]
        if unknown:
            raise ValueError(f"unknown saliency method(s) {unknown}; choose from {[*METHODS, ATTENTION]}")
        if spatial_dims == 3:
            keep = [m for m in chosen if m == ATTENTION or supports_3d(m)]
            return keep, [m for m in chosen if m not in keep]
        return chosen, []


@dataclass
class _Plan:
    """What the audit will compute: methods (controls last), criteria, model roles, randomization stages."""

    protocol: AuditProtocol
    methods: list[str]
    family: list[str]
    criteria: list[str]
    replicates: list[str]
    roles: list[str]
    stages: dict[str, list[tuple[str, list[str]]]]
    variants: list[AuditModel]
    notes: list[str] = field(default_factory=list)


# --- planning ---------------------------------------------------------------------------------


def _check_inputs(data: AuditData, by_name: Mapping[str, AuditModel], config: AuditConfig) -> None:
    if "trained" not in by_name:
        raise ValueError("the audit needs the trained model (an AuditModel named 'trained')")
    unknown = [c for c in config.criteria if c not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criteria {unknown}; choose from {list(CRITERIA)}")
    n = len(data.ids)
    if n == 0 or data.images.shape[0] != n:
        raise ValueError(f"{n} image ids for {data.images.shape[0]} images")
    if data.masks is not None and tuple(np.shape(data.masks)) != (n, *data.images.shape[2:]):
        raise ValueError(f"masks have shape {np.shape(data.masks)}, expected {(n, *data.images.shape[2:])}")


def _methods(config: AuditConfig, trained: torch.nn.Module, spatial_dims: int, notes: list[str]) -> list[str]:
    methods, skipped = config.resolved_methods(spatial_dims)
    gated = has_attention(trained)
    if not config.methods and gated:
        methods.append(ATTENTION)
    if ATTENTION in methods and not gated:
        raise ValueError("the 'attention' method needs a trained model with the trainable attention gate")
    if skipped:
        notes.append(
            f"{', '.join(method_label(m) for m in skipped)} skipped: defined for 2-D images only "
            f"(these inputs are {spatial_dims}-D)."
        )
    return methods


def _criteria(
    config: AuditConfig, data: AuditData, by_name: Mapping[str, AuditModel], replicates: list[str]
) -> tuple[list[str], list[str]]:
    criteria, notes = list(config.criteria), []
    if "localization" in criteria and data.masks is None:
        criteria.remove("localization")
        notes.append("Localization skipped: no ground-truth masks or boxes.")
    if "repeatability" in criteria and len(replicates) < 2:
        criteria.remove("repeatability")
        notes.append("Repeatability skipped: no replicate model (--replica or --train-replicas).")
    if "reproducibility" in criteria and "other" not in by_name:
        criteria.remove("reproducibility")
        notes.append("Reproducibility skipped: no second-architecture model (--other-arch or --train-replicas).")
    return criteria, notes


def _plan(data: AuditData, models: Sequence[AuditModel], config: AuditConfig) -> _Plan:
    from saliency.controls import CONTROLS
    from saliency.randomization import named_blocks

    by_name = {m.name: m for m in models}
    _check_inputs(data, by_name, config)
    protocol = config.protocol
    notes: list[str] = []
    family = _methods(config, by_name["trained"].model, data.images.ndim - 2, notes)
    given = sorted(name for name in by_name if name.startswith(REPLICA))
    replicates = ["trained", *given][: protocol.replicates]
    if len(given) + 1 != protocol.replicates and {"randomization", "repeatability"} & set(config.criteria):
        notes.append(
            f"The '{protocol.name}' preset uses {protocol.replicates} replicates of the audited architecture; "
            f"{len(given) + 1} given, {len(replicates)} used (randomization curves and repeatability pairs are "
            "over these)."
        )
    criteria, skipped = _criteria(config, data, by_name, replicates)
    notes += skipped
    randomized = replicates if "randomization" in criteria else []
    stages = {role: named_blocks(by_name[role].model, include_stem=config.include_stem) for role in randomized}
    roles = list(dict.fromkeys(replicates if ("repeatability" in criteria or randomized) else ["trained"]))
    if "localization" in criteria and "untrained" in by_name:
        roles.append("untrained")
    if "reproducibility" in criteria:
        roles.append("other")
    variants = [m for m in models if m.name.startswith("variant:")]
    return _Plan(protocol, [*family, *CONTROLS], family, criteria, replicates, roles, stages, variants, notes)


# --- computing the maps and the per-image rows ----------------------------------------------------


def _compute_maps(plan: _Plan, by_name: Mapping[str, AuditModel], cache: MapCache) -> dict[str, dict[str, Any]]:
    """``{role: {method: MapBatch}}`` for every role the plan needs, and each variant's single map."""
    maps: dict[str, dict[str, Any]] = {}
    for role in plan.roles:
        entry = by_name[role]
        for method in plan.methods:
            if method == ATTENTION and not has_attention(entry.model):
                plan.notes.append(f"Attention: the {role} model ({entry.architecture}) has no gate; not compared.")
                continue
            maps.setdefault(role, {})[method] = cache.maps(entry.model, method, entry.layer)
    for entry in plan.variants:  # localization of differently trained models (e.g. box supervision levels)
        method = ATTENTION if has_attention(entry.model) else "gradcam"
        maps[entry.name] = {method: cache.maps(entry.model, method, entry.layer)}
    return maps


def _prefetch_maps(
    plan: _Plan, by_name: Mapping[str, AuditModel], config: AuditConfig, cache: MapCache, executor: MapExecutor
) -> None:
    """Compute every map set the audit will ask ``cache`` for with ``executor`` (the models' and the
    variants' maps in one call, then each replicate's randomized states, one replicate at a time so
    that only one replicate's states are in memory)."""
    from saliency.randomization import cascading_randomization

    def methods_of(model: torch.nn.Module) -> list[str]:
        return [m for m in plan.methods if m != ATTENTION or has_attention(model)]

    jobs = [MapJob(by_name[r].model, m, by_name[r].layer) for r in plan.roles for m in methods_of(by_name[r].model)]
    for entry in plan.variants:
        jobs.append(MapJob(entry.model, ATTENTION if has_attention(entry.model) else "gradcam", entry.layer))
    cache.prefetch(jobs, executor)
    for role, stages in plan.stages.items():
        entry = by_name[role]
        seed = randomization_seed(config.seed, plan.replicates, role)
        states = list(cascading_randomization(entry.model, stages, seed=seed))[1:]  # [0]: the original
        methods = methods_of(entry.model)
        cache.prefetch([MapJob(model, m, entry.layer) for _, model in states for m in methods], executor)


def randomization_seed(seed: int, replicates: Sequence[str], role: str) -> int:
    """The re-initialization seed of a replicate: ``seed`` plus its index (``trained`` 0, ``replica1`` 1, ...).

    Each replicate is randomized with its own draws, as the paper's independently randomized
    replicates were, so the SD over replicates covers the draws as well as the training.
    """
    return int(seed) + list(replicates).index(role)


def _randomize(
    plan: _Plan,
    by_name: Mapping[str, AuditModel],
    maps: Mapping[str, Mapping[str, Any]],
    cache: MapCache,
    data: AuditData,
    config: AuditConfig,
) -> tuple[list[dict[str, Any]], dict[str, RandomizationScores]]:
    """Per-image SSIM rows of every randomized state of every replicate, and each method's scores."""
    from saliency.audit_rows import stage_rows
    from saliency.randomization import cascading_randomization

    calibrate = plan.protocol.agreement_line is None
    rows: list[dict[str, Any]] = []
    scores: dict[str, RandomizationScores] = {}
    for role, stages in plan.stages.items():
        entry = by_name[role]
        per_method: dict[str, list[np.ndarray]] = {}
        states = cascading_randomization(
            entry.model, stages, seed=randomization_seed(config.seed, plan.replicates, role)
        )
        for index, (stage, model) in enumerate(states):
            if index == 0:
                continue  # the original: its maps are the reference
            for method, reference in maps[role].items():
                batch = cache.maps(model, method, entry.layer)
                new = stage_rows(
                    data.ids, role, method, index, stage, reference, batch, plan.protocol.data_range,
                    calibrate=calibrate,
                )  # fmt: skip
                rows += new
                per_method.setdefault(method, []).append(np.asarray([r["ssim"] for r in new], dtype=float))
                score = scores.setdefault(method, RandomizationScores(states=[label for label, _ in stages]))
                score.degenerate += int(np.sum(batch.degenerate))
        for method, values in per_method.items():
            scores[method].ssim[role] = np.stack(values)
    return rows, scores


def _baselines(
    plan: _Plan, maps: Mapping[str, Mapping[str, Any]], scores: dict[str, RandomizationScores], config: AuditConfig
) -> list[dict[str, Any]]:
    """The inter-image SSIM baseline of each method under each randomized replicate (one summary row each)."""
    from saliency.audit_rows import baseline_ssim

    rows: list[dict[str, Any]] = []
    for role in plan.stages:
        for method, score in scores.items():
            if role not in score.ssim:
                continue
            batch = maps[role][method]
            values = baseline_ssim(
                batch, pairs_per_image=config.pairs_per_image, data_range=plan.protocol.data_range, seed=config.seed
            )
            with np.errstate(all="ignore"):
                score.baseline[role] = np.nanmean(values, axis=1)
            rows.append(
                {
                    "model": role,
                    "method": method,
                    "stage_index": -1,
                    "stage": "inter-image baseline",
                    "image_id": f"{values.size} random pairs",
                    "ssim": finite_mean(values),
                    "ssim_range2": "",
                    "degenerate": int(np.sum(batch.degenerate)),
                }
            )
    return rows


def _localize(
    plan: _Plan, data: AuditData, maps: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], dict[str, dict[str, int]]]:
    """Per-image AUPRC rows; ``{source: {method: statistic per image}}``; degenerate counts per source."""
    from saliency.audit_rows import localization_rows, prior_maps

    assert data.masks is not None
    masks = np.asarray(data.masks, dtype=bool)
    n = len(data.ids)
    labels = data.labels if data.labels is not None else np.full(n, -1)
    rows: list[dict[str, Any]] = []
    scores: dict[str, dict[str, np.ndarray]] = {}
    degenerate: dict[str, dict[str, int]] = {}

    def add(source: str, method: str, map_of: Callable[[int], np.ndarray], flags: Any, targets: Any) -> None:
        new = localization_rows(data.ids, masks, labels, source, method, map_of, flags, targets)
        rows.extend(new)
        statistic = plan.protocol.localization_statistic
        scores.setdefault(source, {})[method] = np.asarray([r[statistic] for r in new], dtype=float)
        degenerate.setdefault(source, {})[method] = int(np.sum(flags))

    for source in ("trained", "untrained"):
        for method, batch in maps.get(source, {}).items():
            if source == "untrained" and method not in plan.family:
                continue  # a control ignores the model: its untrained maps are its trained maps
            add(source, method, lambda i, b=batch: b.maps[i], batch.degenerate, batch.targets)
    add("prior", "prior", prior_maps(masks, data.prior), np.zeros(n, bool), None)
    if data.localizer is not None:
        localizer = np.asarray(data.localizer, dtype=np.float32)
        add("localizer", "localizer", lambda i: localizer[i], np.zeros(n, bool), None)
    return rows, scores, degenerate


def _model_pairs(plan: _Plan, criterion: str) -> list[tuple[str, str]]:
    if criterion == "repeatability":
        reps = plan.replicates
        return [(reps[i], reps[j]) for i in range(len(reps)) for j in range(i + 1, len(reps))]
    return [("trained", "other")]


def _agreement_rows(
    plan: _Plan, data: AuditData, maps: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Per-image SSIM rows of every model pair of repeatability and reproducibility."""
    from saliency.audit_rows import pair_rows

    out: dict[str, list[dict[str, Any]]] = {"repeatability": [], "reproducibility": []}
    for criterion in out:
        if criterion not in plan.criteria:
            continue
        for a, b in _model_pairs(plan, criterion):
            for method in plan.methods:
                if method in maps.get(a, {}) and method in maps.get(b, {}):
                    out[criterion] += pair_rows(
                        data.ids, maps[a][method], maps[b][method], method, (a, b), plan.protocol.data_range,
                        calibrate=plan.protocol.agreement_line is None,
                    )  # fmt: skip
    return out


# --- verdicts ---------------------------------------------------------------------------------------


def _calibrated_lines(
    plan: _Plan, pairs: Mapping[str, list[dict[str, Any]]], rand_rows: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Under a preset without a fixed agreement line: each method's line, fitted on its own map pairs."""
    from saliency.audit_rows import calibration_pairs
    from saliency.protocol import calibrate_line

    if plan.protocol.agreement_line is not None or not any(pairs.values()):
        return {}
    return {m: calibrate_line(*calibration_pairs(m, rand_rows, pairs)) for m in plan.methods}


def _summary(
    plan: _Plan,
    config: AuditConfig,
    localization: Any,
    randomization: Mapping[str, RandomizationScores],
    pairs: Mapping[str, list[dict[str, Any]]],
    rand_rows: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The summary rows of every criterion that ran, and the calibrated agreement lines (or {})."""
    from saliency.verdicts import agreement_summary, localization_summary, randomization_summary

    protocol, summary = plan.protocol, []
    if "localization" in plan.criteria:
        _, scores, degenerate = localization
        summary += localization_summary(
            scores, plan.methods, protocol, alpha=config.alpha, degenerate=degenerate, family=plan.family
        )
    if "randomization" in plan.criteria:
        summary += randomization_summary(randomization, protocol, alpha=config.alpha, family=plan.family)
    lines = _calibrated_lines(plan, pairs, rand_rows)
    for criterion, rows in pairs.items():
        if criterion not in plan.criteria or not rows:
            continue
        compared = [m for m in plan.methods if any(r["method"] == m for r in rows)]
        ssim = {m: np.asarray([r["ssim"] for r in rows if r["method"] == m], dtype=float) for m in compared}
        degenerate = {m: sum(r["degenerate_a"] or r["degenerate_b"] for r in rows if r["method"] == m) for m in ssim}
        summary += agreement_summary(
            criterion, ssim, lines, protocol, alpha=config.alpha, degenerate=degenerate,
            pairs=len(_model_pairs(plan, criterion)),
        )  # fmt: skip
    return summary, lines


def _localizer_agreement(
    plan: _Plan, data: AuditData, pairs: Mapping[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Informative rows: the two supervised localizers' SSIM, the repeatability baseline of the paper."""
    from saliency.criteria import ssim

    if "repeatability" not in plan.criteria or data.localizer is None or data.localizer_replica is None:
        return []
    pair = np.asarray(
        [
            ssim(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=plan.protocol.data_range)
            for a, b in zip(data.localizer, data.localizer_replica, strict=True)
        ]
    )
    return [
        SummaryRow(
            method,
            "repeatability",
            statistic="mean SSIM",
            value=finite_mean([r["ssim"] for r in pairs["repeatability"] if r["method"] == method]),
            baseline="supervised localizer pair (two seeds)",
            baseline_value=finite_mean(pair),
            n=int(np.isfinite(pair).sum()),
            rule=INFORMATIVE,
        ).as_dict()
        for method in plan.methods
    ]


def _variant_rows(
    plan: _Plan, data: AuditData, maps: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Localization rows of the variant models and one comparison row per variant."""
    from saliency.audit_rows import localization_rows

    if not plan.variants or "localization" not in plan.criteria or data.masks is None:
        return [], []
    labels = data.labels if data.labels is not None else np.full(len(data.ids), -1)
    rows, table = [], []
    for entry in plan.variants:
        ((method, batch),) = maps[entry.name].items()
        new = localization_rows(
            data.ids, np.asarray(data.masks, bool), labels, entry.name, method, lambda i, b=batch: b.maps[i],
            batch.degenerate, batch.targets,
        )  # fmt: skip
        rows += new
        table.append(
            {
                "model": entry.name.split(":", 1)[1],
                "method": method_label(method),
                "mean_average_precision": finite_mean([r["average_precision"] for r in new]),
                "mean_trapezoid": finite_mean([r["trapezoid"] for r in new]),
                "n_degenerate": int(np.sum(batch.degenerate)),
                "source": entry.source,
            }
        )
    return rows, table


def _mark_discrimination(
    summary: list[dict[str, Any]], found: Mapping[str, list[str]], criteria: Sequence[str]
) -> None:
    for row in summary:
        if is_informative(row):
            continue
        row["discriminating"] = row["criterion"] not in found if row["criterion"] in criteria else ""


#: Why a control can pass a criterion: structural for the two agreement criteria, data-dependent otherwise.
_WHY = {
    "repeatability": "a map that ignores the model is identical for every model, so this criterion can only "
    "be read beside randomization",
    "reproducibility": "a map that ignores the model is identical for every model, so this criterion can only "
    "be read beside randomization",
    "localization": "on these images an edge or intensity map already beats the prior, so beating it says "
    "little about the model",
}


def _discrimination_notes(found: Mapping[str, list[str]]) -> list[str]:
    from saliency.verdicts import CRITERION_LABELS

    return [
        f"{CRITERION_LABELS[criterion]} is NOT DISCRIMINATING on this setting: "
        f"{' and '.join(method_label(c) for c in controls)} (blind to the model) "
        f"{'pass' if len(controls) > 1 else 'passes'} it; "
        f"{_WHY.get(criterion, 'a pass there says nothing about the model')}."
        for criterion, controls in found.items()
    ]


# --- the audit --------------------------------------------------------------------------------


def _settings(
    plan: _Plan,
    config: AuditConfig,
    by_name: Mapping[str, AuditModel],
    data: AuditData,
    lines: Mapping[str, Any],
    cache: MapCache,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    from saliency.controls import CONTROL_POSTPROCESS, CONTROLS
    from saliency.methods import method_settings, passes_per_image
    from saliency.randomization import randomization_settings

    def described(method: str) -> dict[str, Any]:
        if method == ATTENTION:
            return {"read-out": ATTENTION_READOUT}
        if method in CONTROLS:
            return {"control": method_label(method), "postprocess": CONTROL_POSTPROCESS[method].to_dict()}
        return method_settings(method, config.method_preset).to_dict()

    def passes(method: str) -> int:
        if method == ATTENTION or method in CONTROLS:
            return 1
        return passes_per_image(method_settings(method, config.method_preset))

    trained = by_name["trained"]
    randomization = None
    if plan.stages:
        stages = plan.stages.get("trained") or next(iter(plan.stages.values()))
        randomization = {
            **randomization_settings(trained.model, stages, include_stem=config.include_stem, seed=config.seed),
            "models": list(plan.stages),
            "seeds": {role: randomization_seed(config.seed, plan.replicates, role) for role in plan.stages},
        }
    return {
        "config": asdict(config),
        "protocol": plan.protocol.to_dict(),
        "rules": {c: plan.protocol.rule(c, config.alpha) for c in plan.criteria},
        "calibrated_lines": dict(lines),
        "methods": {m: described(m) for m in plan.methods},
        "passes_per_image": {m: passes(m) for m in plan.methods},
        "randomization": randomization,
        "models": {
            m.name: {"architecture": m.architecture, "source": m.source, "layer": m.layer} for m in by_name.values()
        },
        "replicates": plan.replicates,
        "data": {
            "n_images": len(data.ids),
            "description": data.description,
            "prior": data.prior_source,
            "spatial_dims": data.images.ndim - 2,
        },
        "criteria_run": plan.criteria,
        "notes": plan.notes,
        "cache": {"computed": cache.computed, "loaded": cache.loaded},
        **dict(extra or {}),
    }


def _write_tables(out: Path, result: AuditResult) -> None:
    from saliency.audit_rows import LOCALIZATION_COLUMNS, PAIR_COLUMNS, RANDOMIZATION_COLUMNS

    columns = {
        "localization.csv": LOCALIZATION_COLUMNS,
        "randomization.csv": RANDOMIZATION_COLUMNS,
        "repeatability.csv": PAIR_COLUMNS,
        "reproducibility.csv": PAIR_COLUMNS,
    }
    out.mkdir(parents=True, exist_ok=True)
    result.files["summary.csv"] = write_csv(out / "summary.csv", result.summary, SUMMARY_COLUMNS)
    for name, cols in columns.items():
        result.files[name] = write_csv(out / name, result.rows.get(name, []), cols)
    result.files["settings.json"] = write_json(out / "settings.json", result.settings)


def run_audit(
    data: AuditData,
    models: Sequence[AuditModel],
    config: AuditConfig,
    out: str | os.PathLike[str],
    *,
    title: str = "Saliency trust audit",
    progress: bool = True,
    notes: Sequence[str] = (),
    extra_settings: Mapping[str, Any] | None = None,
    map_executor: MapExecutor | None = None,
) -> AuditResult:
    """Run the audit and write ``OUT/{report.html, summary.csv, localization.csv, randomization.csv,
    repeatability.csv, reproducibility.csv, settings.json}`` (+ ``report.pdf`` with the ``pdf`` extra).

    Args:
        data: images and ground truth (:class:`AuditData`).
        models: the networks by role (:class:`AuditModel`); ``trained`` is required, ``untrained``
            enables the localization baseline, ``replica1``, ``replica2`` ... repeatability (and
            more randomization replicates), ``other`` reproducibility. A criterion whose inputs are
            missing is skipped and the report says why.
        config: :class:`AuditConfig`.
        out: output folder (created; a rerun reuses ``OUT/cache``).
        title: report title.
        progress: show a progress bar (stderr).
        notes: the caller's notes for the report (e.g. a substituted prior), shown first.
        extra_settings: further settings to record (e.g. the pipeline, the weights paths).
        map_executor: computes the map sets not cached yet, all at once, before the audit reads them
            (e.g. on a Ray cluster: :mod:`pipelines.ray_maps`); None computes each here when needed.

    Returns:
        :class:`AuditResult`.

    Raises:
        ValueError: no ``trained`` model, mismatched data shapes, unknown methods, criteria or preset.
    """
    from saliency.controls import CONTROLS
    from saliency.verdicts import non_discriminating, pass_matrix

    out = Path(out)
    by_name = {m.name: m for m in models}
    plan = _plan(data, models, config)
    plan.notes[:0] = list(notes)
    total = len(plan.methods) * (len(plan.roles) + sum(len(s) for s in plan.stages.values())) + len(plan.variants)
    bar = progress_bar(progress)
    task = bar.add_task("saliency maps", total=total) if bar else None
    cache = MapCache(
        out / "cache", data.ids, data.images, method_preset=config.method_preset, seed=config.seed,
        batch_size=config.batch_size, progress=lambda: bar.update(task, advance=1) if bar is not None else None,
    )  # fmt: skip
    if bar is not None:
        bar.start()
    try:
        if map_executor is not None:
            _prefetch_maps(plan, by_name, config, cache, map_executor)
        maps = _compute_maps(plan, by_name, cache)
        rand_rows, randomization = _randomize(plan, by_name, maps, cache, data, config) if plan.stages else ([], {})
    finally:
        if bar is not None:
            bar.stop()
    base_rows = _baselines(plan, maps, randomization, config)
    localization = _localize(plan, data, maps) if "localization" in plan.criteria else ([], {}, {})
    pairs = _agreement_rows(plan, data, maps)
    summary, lines = _summary(plan, config, localization, randomization, pairs, rand_rows)
    summary += _localizer_agreement(plan, data, pairs)
    matrix = pass_matrix(summary, plan.methods)
    found = non_discriminating(matrix, CONTROLS)
    _mark_discrimination(summary, found, plan.criteria)
    variant_loc, variant_table = _variant_rows(plan, data, maps)
    result = AuditResult(
        methods=plan.methods,
        criteria=plan.criteria,
        summary=summary,
        matrix=matrix,
        non_discriminating=found,
        rows={
            "localization.csv": localization[0] + variant_loc,
            "randomization.csv": rand_rows + base_rows,
            "repeatability.csv": pairs["repeatability"],
            "reproducibility.csv": pairs["reproducibility"],
        },
        randomization=randomization,
        variant_rows=variant_table,
        settings={},
        notes=_discrimination_notes(found) + plan.notes,
    )
    result.settings = _settings(plan, config, by_name, data, lines, cache, extra_settings)
    _write_tables(out, result)

    from saliency.audit_report import write_report

    result.files.update(write_report(out, title=title, data=data, maps=maps, result=result, config=config))
    return result
