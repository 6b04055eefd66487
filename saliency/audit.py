"""The saliency trust audit: eight methods, four criteria, their baselines, one report.

The protocol of Arun et al. 2020 (spec ``saliency.md`` §2-5, defaults of §11) over any torch
classifier and any set of images with ground-truth masks:

1. **Localisation utility**: per-image AUPRC of each method's map against the mask, average
   precision (primary) and the paper's trapezoid, for the trained model, an untrained model of
   the same architecture, the average-mask prior and (optional) a supervised localiser's maps.
   Pass: the trained model's mean average precision exceeds the prior's and a one-sided paired
   Wilcoxon test (trained > prior, Holm-corrected over the methods) has p < alpha.
2. **Randomisation sensitivity**: cascading top-down re-initialisation of the network's named
   blocks (:mod:`saliency.randomization`); per stage the SSIM between each image's map and its
   map under the trained model. Baseline: the inter-image SSIM (maps of different images under
   the trained model). Pass: the mean-SSIM curve goes below the baseline (at its minimum, or at
   the last stage with ``randomization_rule="last"``).
3. **Repeatability**: SSIM between the maps of two models of one architecture trained with
   different seeds. Pass: mean SSIM >= ``repeat_threshold`` (0.5, the paper's reference line).
4. **Reproducibility**: the same between two architectures.

Degenerate maps (constant or not finite) are kept in every table with their flag and counted in
the summary; their scores are NaN and the statistics use the finite values only, with the count
stated. Maps are cached per (model weights, method, settings, images) under ``OUT/cache``, so an
interrupted audit resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg.writers import write_bytes, write_csv, write_json

__all__ = [
    "CRITERIA",
    "AuditConfig",
    "AuditData",
    "AuditModel",
    "AuditResult",
    "run_audit",
]

CRITERIA: tuple[str, ...] = ("localization", "randomization", "repeatability", "reproducibility")
#: The ninth method: the map of a model with the trainable attention gate (:mod:`saliency.attention`).
ATTENTION = "attention"
#: Post-processing of attention maps: min-max only (they are already non-negative and single-channel).
ATTENTION_READOUT = "gate map, heads averaged, upsampled (bilinear/trilinear) to the input, min-max to [0, 1]"


def method_label(method: str) -> str:
    """Display name of a method (the eight post-hoc methods and the trainable attention)."""
    from saliency.methods import LABELS

    return "Attention (trainable)" if method == ATTENTION else LABELS.get(method, method)


def has_attention(model: torch.nn.Module) -> bool:
    """Whether ``model`` exposes a trainable attention map (a callable ``attention(x)``)."""
    return callable(getattr(model, "attention", None))


CRITERION_LABELS = {
    "localization": "Localisation (AUPRC)",
    "randomization": "Randomisation sensitivity",
    "repeatability": "Repeatability",
    "reproducibility": "Reproducibility",
}
LOCALIZATION_COLUMNS = (
    "image_id",
    "method",
    "source",
    "average_precision",
    "trapezoid",
    "degenerate",
    "explained_class",
    "true_class",
)
RANDOMIZATION_COLUMNS = ("model", "method", "stage_index", "stage", "image_id", "ssim", "degenerate")
PAIR_COLUMNS = ("image_id", "method", "model_a", "model_b", "ssim", "degenerate_a", "degenerate_b")
SUMMARY_COLUMNS = (
    "method",
    "criterion",
    "statistic",
    "value",
    "baseline",
    "baseline_value",
    "p_value",
    "p_holm",
    "n",
    "n_degenerate",
    "passed",
    "rule",
)


@dataclass
class AuditModel:
    """One network in the audit.

    Attributes:
        name: its role: ``"trained"``, ``"replica"`` (same architecture, another seed), ``"other"``
            (another architecture) or ``"untrained"`` (fresh initialisation).
        model: the classifier (never modified: methods and randomisation work on copies).
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
        masks: ``(N, *spatial)`` bool ground-truth regions (None: no localisation criterion).
        labels: ``(N,)`` ground-truth classes (reported beside the explained class), or None.
        prior: the average-mask prior ``(*spatial)``; None = leave-one-out over ``masks`` (image
            i's prior is the mean of the other images' masks).
        prior_source: how the prior was made (reported).
        localizer: ``(N, *spatial)`` maps of a supervised localiser (optional baseline).
        localizer_replica: the maps of a second localiser trained with another seed: their SSIM
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
        methods: saliency methods (:data:`saliency.methods.METHODS`).
        criteria: criteria to run (:data:`CRITERIA`).
        preset: method settings preset, ``"paper"`` (spec §10.1) or ``"captum"``.
        data_range: SSIM data range (1.0 principled for maps in [0, 1]; 2.0 reproduces the paper).
        pairs_per_image: random partners per image for the inter-image SSIM baseline.
        seed: seeds the noise of SmoothGrad, the randomisation and the baseline pairs.
        include_stem: the last randomisation stage re-initialises the stem too (fully random net).
        randomization_rule: ``"min"`` (the curve's minimum below the baseline) or ``"last"``.
        repeat_threshold: repeatability/reproducibility pass line (mean SSIM).
        alpha: significance level after Holm correction.
        batch_size: images x samples per forward/backward chunk.
        examples: images shown in the overlay figure.
    """

    methods: tuple[str, ...] = ()
    criteria: tuple[str, ...] = CRITERIA
    preset: str = "paper"
    data_range: float = 1.0
    pairs_per_image: int = 50
    seed: int = 0
    include_stem: bool = True
    randomization_rule: str = "min"
    repeat_threshold: float = 0.5
    alpha: float = 0.05
    batch_size: int = 32
    examples: int = 3

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
class AuditResult:
    """What an audit produced: the summary rows, the pass/fail matrix and the files written."""

    summary: list[dict[str, Any]]
    matrix: dict[str, dict[str, bool | None]]
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)


# --- map computation with a cache -------------------------------------------------------------


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def attention_maps(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 32) -> Any:
    """The trainable attention maps of a gated model as a :class:`saliency.methods.MapBatch`
    (min-max per image, degenerate when constant; targets = predicted classes)."""
    from saliency.methods import MapBatch
    from saliency.postprocess import PostProcess, postprocess

    if not has_attention(model):
        raise ValueError(f"{type(model).__name__} has no trainable attention map (no attention() method)")
    was_training = model.training
    model.eval()
    logits, maps = [], []
    try:
        with torch.no_grad():
            for chunk in images.split(max(1, batch_size)):
                out, attn = model.attention(chunk)  # type: ignore[operator]
                logits.append(out.float().cpu())
                maps.append(attn.float().cpu())
    finally:
        model.train(was_training)
    raw = torch.cat(maps).numpy()
    post, degenerate = postprocess(raw, PostProcess(abs=False, channel_reduce="sum", clip_percentile=None, minmax=True))
    return MapBatch(maps=post, degenerate=degenerate, targets=torch.cat(logits).argmax(1).numpy(), raw=raw)


class _MapCache:
    """Post-processed maps per (weights, method, settings, images) in ``folder`` as ``.npz``."""

    def __init__(self, folder: Path, data: AuditData, config: AuditConfig, progress: Callable[[], None]) -> None:
        self.folder = folder
        self.data = data
        self.config = config
        self.progress = progress
        ids = "\n".join(data.ids).encode()
        self.images_key = hashlib.sha256(ids + data.images.numpy().tobytes()).hexdigest()[:12]
        self.computed = 0
        self.loaded = 0

    def maps(self, model: torch.nn.Module, method: str, layer: str | None, weights: str | None = None) -> Any:
        from saliency.methods import MapBatch, explain, method_settings

        described = {"read-out": ATTENTION_READOUT} if method == ATTENTION else None
        settings = None if method == ATTENTION else method_settings(method, self.config.preset)
        key_text = json.dumps(
            [
                weights or _state_hash(model),
                method,
                described or settings.to_dict(),  # type: ignore[union-attr]
                layer,
                self.images_key,
                self.config.seed,
            ],
            sort_keys=True,
            default=str,
        )
        key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
        path = self.folder / f"{method}-{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as stored:
                    batch = MapBatch(
                        maps=stored["maps"], degenerate=stored["degenerate"], targets=stored["targets"], raw=None
                    )
                self.loaded += 1
                self.progress()
                return batch
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
        if method == ATTENTION:
            batch = attention_maps(model, self.data.images, batch_size=self.config.batch_size)
        else:
            batch = explain(
                model,
                self.data.images,
                method,
                settings=settings,
                layer=layer,
                batch_size=self.config.batch_size,
                seed=self.config.seed,
            )
        buffer = io.BytesIO()
        np.savez_compressed(buffer, maps=batch.maps, degenerate=batch.degenerate, targets=batch.targets)
        write_bytes(path, buffer.getvalue())
        self.computed += 1
        self.progress()
        return batch


# --- criteria ---------------------------------------------------------------------------------


def _localization(
    data: AuditData, maps: Mapping[str, Mapping[str, Any]], methods: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Per-image AUPRC rows and {source: {method: AP array}} (sources: trained, untrained, prior, localizer)."""
    from saliency.criteria import auprc

    assert data.masks is not None
    masks = np.asarray(data.masks, dtype=bool)
    rows: list[dict[str, Any]] = []
    ap: dict[str, dict[str, np.ndarray]] = {}
    n = len(data.ids)
    labels = data.labels if data.labels is not None else np.full(n, -1)

    def score(source: str, method: str, map_of: Callable[[int], np.ndarray], degenerate, targets) -> None:
        values = np.full(n, np.nan)
        for i in range(n):
            result = auprc(map_of(i), masks[i])
            values[i] = result["average_precision"]
            rows.append(
                {
                    "image_id": data.ids[i],
                    "method": method,
                    "source": source,
                    "average_precision": result["average_precision"],
                    "trapezoid": result["trapezoid"],
                    "degenerate": bool(degenerate[i]),
                    "explained_class": int(targets[i]) if targets is not None else "",
                    "true_class": int(labels[i]),
                }
            )
        ap.setdefault(source, {})[method] = values

    for source in ("trained", "untrained"):
        for method in methods:
            batch = maps.get(source, {}).get(method)
            if batch is not None:
                score(source, method, lambda i, b=batch: b.maps[i], batch.degenerate, batch.targets)
    if data.prior is not None:
        prior = np.asarray(data.prior, dtype=np.float32)
        score("prior", "prior", lambda i: prior, np.zeros(n, bool), None)
    elif n > 1:
        total = masks.reshape(n, -1).sum(axis=0)
        shape = masks.shape[1:]
        score(
            "prior",
            "prior",
            lambda i: ((total - masks[i].ravel()) / (n - 1)).reshape(shape),
            np.zeros(n, bool),
            None,
        )
    if data.localizer is not None:
        loc = np.asarray(data.localizer, dtype=np.float32)
        score("localizer", "localizer", lambda i: loc[i], np.zeros(n, bool), None)
    return rows, ap


def _pair_rows(
    data: AuditData, a: Any, b: Any, method: str, names: tuple[str, str], data_range: float
) -> list[dict[str, Any]]:
    from saliency.criteria import ssim

    return [
        {
            "image_id": data.ids[i],
            "method": method,
            "model_a": names[0],
            "model_b": names[1],
            "ssim": ssim(a.maps[i], b.maps[i], data_range=data_range),
            "degenerate_a": bool(a.degenerate[i]),
            "degenerate_b": bool(b.degenerate[i]),
        }
        for i in range(len(data.ids))
    ]


def _finite_mean(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# --- the audit --------------------------------------------------------------------------------


def run_audit(
    data: AuditData,
    models: Sequence[AuditModel],
    config: AuditConfig,
    out: str | os.PathLike[str],
    *,
    title: str = "Saliency trust audit",
    progress: bool = True,
    extra_settings: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Run the audit and write ``OUT/{report.html, summary.csv, localization.csv, randomization.csv,
    repeatability.csv, reproducibility.csv, settings.json}`` (+ ``report.pdf`` with the ``pdf`` extra).

    Args:
        data: images and ground truth (:class:`AuditData`).
        models: the networks by role (:class:`AuditModel`); ``trained`` is required, ``untrained``
            enables the localisation baseline, ``replica`` repeatability (and a second randomisation
            replicate), ``other`` reproducibility. A criterion whose inputs are missing is skipped
            and the report says why.
        config: :class:`AuditConfig`.
        out: output folder (created; a rerun reuses ``OUT/cache``).
        title: report title.
        progress: show a progress bar (stderr).
        extra_settings: further settings to record (e.g. the pipeline, the weights paths).

    Returns:
        :class:`AuditResult`.

    Raises:
        ValueError: no ``trained`` model, mismatched data shapes, unknown methods or criteria.
    """
    from saliency.criteria import holm, inter_image_ssim, paired_wilcoxon_holm, summarise
    from saliency.methods import method_settings, passes_per_image
    from saliency.randomization import cascading_randomization, named_blocks, randomization_settings

    out = Path(out)
    by_name = {m.name: m for m in models}
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
    spatial_dims = data.images.ndim - 2
    methods, skipped_methods = config.resolved_methods(spatial_dims)
    gated = has_attention(by_name["trained"].model)
    if not config.methods and gated:
        methods.append(ATTENTION)
    if ATTENTION in methods and not gated:
        raise ValueError("the 'attention' method needs a trained model with the trainable attention gate")
    notes: list[str] = []
    if skipped_methods:
        notes.append(
            f"{', '.join(method_label(m) for m in skipped_methods)} skipped: defined for 2-D images only "
            f"(these inputs are {spatial_dims}-D)."
        )
    variants = [m for m in models if m.name.startswith("variant:")]

    criteria = list(config.criteria)
    if "localization" in criteria and data.masks is None:
        criteria.remove("localization")
        notes.append("Localisation skipped: no ground-truth masks or boxes.")
    if "repeatability" in criteria and "replica" not in by_name:
        criteria.remove("repeatability")
        notes.append("Repeatability skipped: no replicate model (--replica or --train-replicas).")
    if "reproducibility" in criteria and "other" not in by_name:
        criteria.remove("reproducibility")
        notes.append("Reproducibility skipped: no second-architecture model (--other-arch or --train-replicas).")

    # Plan the work: (role or randomisation state, method) pairs, for the progress bar.
    randomized_roles = [r for r in ("trained", "replica") if r in by_name] if "randomization" in criteria else []
    stages = {role: named_blocks(by_name[role].model, include_stem=config.include_stem) for role in randomized_roles}
    roles = ["trained"]
    if "localization" in criteria and "untrained" in by_name:
        roles.append("untrained")
    if "repeatability" in criteria or randomized_roles == ["trained", "replica"]:
        roles.append("replica")
    if "reproducibility" in criteria:
        roles.append("other")
    total = len(methods) * (len(roles) + sum(len(s) for s in stages.values())) + len(variants)

    bar = _progress_bar(progress)
    task = bar.add_task("saliency maps", total=total) if bar else None

    def advance() -> None:
        if bar is not None and task is not None:
            bar.update(task, advance=1)

    cache = _MapCache(out / "cache", data, config, advance)
    files: dict[str, Path] = {}
    summary: list[dict[str, Any]] = []
    maps: dict[str, dict[str, Any]] = {}
    rand_rows: list[dict[str, Any]] = []
    loc_rows: list[dict[str, Any]] = []
    pair_rows: dict[str, list[dict[str, Any]]] = {"repeatability": [], "reproducibility": []}
    if bar is not None:
        bar.start()
    try:
        for role in roles:
            entry = by_name[role]
            for method in methods:
                if method == ATTENTION and not has_attention(entry.model):
                    notes.append(f"Attention: the {role} model ({entry.architecture}) has no gate; not compared.")
                    advance()
                    continue
                maps.setdefault(role, {})[method] = cache.maps(entry.model, method, entry.layer)
        for entry in variants:  # localisation of differently trained models (e.g. box supervision levels)
            maps[entry.name] = {ATTENTION if has_attention(entry.model) else "gradcam": None}
            method = next(iter(maps[entry.name]))
            maps[entry.name][method] = cache.maps(entry.model, method, entry.layer)
        for role in randomized_roles:
            entry = by_name[role]
            states = cascading_randomization(
                entry.model, [b for b in stages[role]], seed=config.seed, include_stem=config.include_stem
            )
            for index, (stage, model) in enumerate(states):
                if index == 0:
                    continue  # the original: maps already computed for its role
                for method in methods:
                    batch = cache.maps(model, method, entry.layer)
                    reference = maps[role][method]
                    rand_rows += _stage_rows(data, role, method, index, stage, reference, batch, config.data_range)
    finally:
        if bar is not None:
            bar.stop()

    # Criterion 1: localisation.
    if "localization" in criteria:
        loc_rows, ap = _localization(data, maps, methods)
        prior_ap = ap.get("prior", {}).get("prior")
        tests = (
            paired_wilcoxon_holm({m: ap["trained"][m] for m in methods}, prior_ap, alternative="greater")
            if prior_ap is not None
            else {}
        )
        untrained_tests: dict[str, dict[str, float]] = {}
        if "untrained" in ap:
            compared = [m for m in methods if m in ap["untrained"]]
            raw = {
                m: paired_wilcoxon_holm({m: ap["trained"][m]}, ap["untrained"][m], alternative="greater")[m]["p"]
                for m in compared
            }
            adjusted = holm([raw[m] for m in compared])
            untrained_tests = {m: {"p": raw[m], "p_holm": float(adjusted[i])} for i, m in enumerate(compared)}
        for method in methods:
            values = ap["trained"][method]
            batch = maps["trained"][method]
            stats = summarise(values)
            test = tests.get(method, {})
            prior_mean = _finite_mean(prior_ap) if prior_ap is not None else float("nan")
            passed = (
                bool(stats["mean"] > prior_mean and test.get("p_holm", 1.0) < config.alpha)
                if prior_ap is not None
                else None
            )
            summary.append(
                {
                    "method": method,
                    "criterion": "localization",
                    "statistic": "mean average precision (trained)",
                    "value": stats["mean"],
                    "baseline": "average-mask prior",
                    "baseline_value": prior_mean,
                    "p_value": test.get("p", float("nan")),
                    "p_holm": test.get("p_holm", float("nan")),
                    "n": int(stats["n"]),
                    "n_degenerate": int(np.sum(batch.degenerate)),
                    "passed": passed,
                    "rule": "mean AP > prior's and one-sided paired Wilcoxon (trained > prior), Holm p < "
                    f"{config.alpha}",
                }
            )
            for source in ("untrained", "localizer"):
                baseline = ap.get(source, {}).get(method if source == "untrained" else "localizer")
                if baseline is None:
                    continue
                test_u = untrained_tests.get(method, {}) if source == "untrained" else {}
                summary.append(
                    {
                        "method": method,
                        "criterion": "localization",
                        "statistic": "mean average precision (trained)",
                        "value": stats["mean"],
                        "baseline": "untrained model" if source == "untrained" else "supervised localiser",
                        "baseline_value": _finite_mean(baseline),
                        "p_value": test_u.get("p", float("nan")),
                        "p_holm": test_u.get("p_holm", float("nan")),
                        "n": int(stats["n"]),
                        "n_degenerate": int(np.sum(maps.get("untrained", {}).get(method, batch).degenerate))
                        if source == "untrained"
                        else 0,
                        "passed": None,
                        "rule": "informative (not a pass criterion)",
                    }
                )

    # Criterion 2: randomisation.
    baselines: dict[str, np.ndarray] = {}
    if "randomization" in criteria:
        for method in methods:
            batch = maps["trained"][method]
            values = inter_image_ssim(
                list(batch.maps),
                pairs_per_image=config.pairs_per_image,
                data_range=config.data_range,
                seed=config.seed,
            )
            baselines[method] = np.asarray(values, dtype=float)
            rand_rows.append(
                {
                    "model": "trained",
                    "method": method,
                    "stage_index": -1,
                    "stage": "inter-image baseline",
                    "image_id": f"{len(values)} random pairs",
                    "ssim": _finite_mean(values),
                    "degenerate": int(np.sum(batch.degenerate)),
                }
            )
            curve = _curve(rand_rows, method)
            base = _finite_mean(values)
            finite = [v for v in curve.values() if np.isfinite(v)]
            statistic = (
                (min(finite) if finite else float("nan"))
                if config.randomization_rule == "min"
                else (list(curve.values())[-1] if curve else float("nan"))
            )
            n_deg = sum(int(r["degenerate"]) for r in rand_rows if r["method"] == method and r["stage_index"] > 0)
            summary.append(
                {
                    "method": method,
                    "criterion": "randomization",
                    "statistic": "min over stages of mean SSIM"
                    if config.randomization_rule == "min"
                    else "mean SSIM at the last stage",
                    "value": statistic,
                    "baseline": "inter-image SSIM",
                    "baseline_value": base,
                    "p_value": float("nan"),
                    "p_holm": float("nan"),
                    "n": n,
                    "n_degenerate": n_deg,
                    "passed": bool(statistic < base) if np.isfinite(statistic) and np.isfinite(base) else None,
                    "rule": f"curve {'minimum' if config.randomization_rule == 'min' else 'last stage'} "
                    "< inter-image SSIM baseline",
                }
            )

    # Criteria 3 and 4.
    for criterion, other in (("repeatability", "replica"), ("reproducibility", "other")):
        if criterion not in criteria:
            continue
        for method in methods:
            if method not in maps.get(other, {}):
                continue
            rows = _pair_rows(
                data, maps["trained"][method], maps[other][method], method, ("trained", other), config.data_range
            )
            pair_rows[criterion] += rows
            values = np.asarray([r["ssim"] for r in rows], dtype=float)
            stats = summarise(values)
            n_deg = sum(int(r["degenerate_a"] or r["degenerate_b"]) for r in rows)
            summary.append(
                {
                    "method": method,
                    "criterion": criterion,
                    "statistic": "mean SSIM",
                    "value": stats["mean"],
                    "baseline": "reference line",
                    "baseline_value": config.repeat_threshold,
                    "p_value": float("nan"),
                    "p_holm": float("nan"),
                    "n": int(stats["n"]),
                    "n_degenerate": n_deg,
                    "passed": bool(stats["mean"] >= config.repeat_threshold) if np.isfinite(stats["mean"]) else None,
                    "rule": f"mean SSIM >= {config.repeat_threshold}",
                }
            )

    if "repeatability" in criteria and data.localizer is not None and data.localizer_replica is not None:
        from saliency.criteria import ssim

        pair = np.asarray(
            [
                ssim(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), data_range=config.data_range)
                for a, b in zip(data.localizer, data.localizer_replica, strict=True)
            ]
        )
        for method in methods:
            summary.append(
                {
                    "method": method,
                    "criterion": "repeatability",
                    "statistic": "mean SSIM",
                    "value": _finite_mean([r["ssim"] for r in pair_rows["repeatability"] if r["method"] == method]),
                    "baseline": "supervised localiser pair (two seeds)",
                    "baseline_value": _finite_mean(pair),
                    "p_value": float("nan"),
                    "p_holm": float("nan"),
                    "n": int(np.isfinite(pair).sum()),
                    "n_degenerate": 0,
                    "passed": None,
                    "rule": "informative (not a pass criterion)",
                }
            )
    variant_rows: list[dict[str, Any]] = []
    if variants and "localization" in criteria:
        from saliency.criteria import auprc

        assert data.masks is not None
        for entry in variants:
            ((method, batch),) = maps[entry.name].items()
            values = [auprc(batch.maps[i], data.masks[i]) for i in range(n)]
            for i, v in enumerate(values):
                loc_rows.append(
                    {
                        "image_id": data.ids[i],
                        "method": method,
                        "source": entry.name,
                        "average_precision": v["average_precision"],
                        "trapezoid": v["trapezoid"],
                        "degenerate": bool(batch.degenerate[i]),
                        "explained_class": int(batch.targets[i]),
                        "true_class": int(data.labels[i]) if data.labels is not None else -1,
                    }
                )
            variant_rows.append(
                {
                    "model": entry.name.split(":", 1)[1],
                    "method": method_label(method),
                    "mean_average_precision": _finite_mean([v["average_precision"] for v in values]),
                    "mean_trapezoid": _finite_mean([v["trapezoid"] for v in values]),
                    "n_degenerate": int(np.sum(batch.degenerate)),
                    "source": entry.source,
                }
            )

    matrix: dict[str, dict[str, bool | None]] = {m: {} for m in methods}
    for row in summary:
        if row["rule"].startswith("informative"):
            continue
        matrix[row["method"]][row["criterion"]] = row["passed"]

    out.mkdir(parents=True, exist_ok=True)
    files["summary.csv"] = write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    files["localization.csv"] = write_csv(out / "localization.csv", loc_rows, LOCALIZATION_COLUMNS)
    files["randomization.csv"] = write_csv(out / "randomization.csv", rand_rows, RANDOMIZATION_COLUMNS)
    for criterion in ("repeatability", "reproducibility"):
        files[f"{criterion}.csv"] = write_csv(out / f"{criterion}.csv", pair_rows[criterion], PAIR_COLUMNS)
    settings = {
        "config": asdict(config),
        "methods": {
            m: {"read-out": ATTENTION_READOUT} if m == ATTENTION else method_settings(m, config.preset).to_dict()
            for m in methods
        },
        "passes_per_image": {
            m: 1 if m == ATTENTION else passes_per_image(method_settings(m, config.preset)) for m in methods
        },
        "randomization": {
            **randomization_settings(
                by_name["trained"].model, stages["trained"], include_stem=config.include_stem, seed=config.seed
            ),
            "stages": {role: [label for label, _ in s] for role, s in stages.items()},
        }
        if stages
        else None,
        "models": {m.name: {"architecture": m.architecture, "source": m.source, "layer": m.layer} for m in models},
        "data": {
            "n_images": n,
            "description": data.description,
            "prior": data.prior_source,
            "spatial_dims": spatial_dims,
        },
        "criteria_run": criteria,
        "notes": notes,
        "cache": {"computed": cache.computed, "loaded": cache.loaded},
        **dict(extra_settings or {}),
    }
    files["settings.json"] = write_json(out / "settings.json", settings)

    from saliency.audit_report import write_report

    files.update(
        write_report(
            out,
            title=title,
            data=data,
            maps=maps,
            methods=methods,
            summary=summary,
            matrix=matrix,
            loc_rows=loc_rows,
            rand_rows=rand_rows,
            baselines=baselines,
            pair_rows=pair_rows,
            variant_rows=variant_rows,
            settings=settings,
            criteria=criteria,
            notes=notes,
            config=config,
        )
    )
    return AuditResult(summary=summary, matrix=matrix, files=files, notes=notes)


def _stage_rows(
    data: AuditData, role: str, method: str, index: int, stage: str, reference: Any, batch: Any, data_range: float
) -> list[dict[str, Any]]:
    from saliency.criteria import ssim

    return [
        {
            "model": role,
            "method": method,
            "stage_index": index,
            "stage": stage,
            "image_id": data.ids[i],
            "ssim": ssim(reference.maps[i], batch.maps[i], data_range=data_range),
            "degenerate": bool(batch.degenerate[i]),
        }
        for i in range(len(data.ids))
    ]


def _curve(rows: Sequence[Mapping[str, Any]], method: str) -> dict[int, float]:
    """Mean SSIM per stage index over images, then over the randomised models."""
    per_model: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["method"] == method and row["stage_index"] > 0:
            per_model.setdefault((row["model"], row["stage_index"]), []).append(row["ssim"])
    per_stage: dict[int, list[float]] = {}
    for (_, index), values in per_model.items():
        per_stage.setdefault(index, []).append(_finite_mean(values))
    return {index: _finite_mean(v) for index, v in sorted(per_stage.items())}


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )
