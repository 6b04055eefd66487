"""Scoring of ``medimg federated simulate``: every model on the test splits it is scored on, and the gains.

:func:`score_seed` scores one seed's checkpoints (the evaluation path of every pipeline:
:func:`pipelines.training.predict_dataset` and the pipeline's metrics) and labels each score with
its role and the batch-norm statistics it used (:mod:`continual.crosssite`):

* the federation's shared model on every member site (``federated_own``; BN ``federation_mean``,
  or ``initial_frozen`` under ``global_frozen``), and under FedBN each site's personalized model
  ``federated_<k>`` on site k (``personalized_own``, BN ``site_own``);
* local-only model k on k (``local_own``) and on every other site h (``local_unseen``), once with
  its own training site's BN (``training_site``) and once with test-time BN re-estimated on h's
  unlabelled training and validation images (``tta``); the pooled model on every site;
* the held-out federation of every site but h, on h (``heldout``), with the BN it was trained with
  (the example-weighted mean of its training sites' BN, as aggregation computes it; or the frozen
  initial statistics) and with test-time BN (``tta``).

:func:`write_outputs` writes ``cross_site.csv``, ``predictions.csv``, ``summary.json`` and
``report.html``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.stats import finite_mean
from medimg.writers import write_csv, write_json

if TYPE_CHECKING:
    from continual.crosssite import Score
    from pipelines.federation import Federation

__all__ = ["build_summary", "score_seed", "summary_lines", "write_outputs"]

#: Roth et al. 2020 (abstract): federated vs local-only on the own site, and relative generalizability gain.
PAPER = {
    "local_gain_relative": 0.063,
    "generalizability_gain": 0.458,
    "source": "Roth et al. 2020, abstract (7 institutions; the exact formulas are not published)",
}


def _trained_on(meta: Mapping[str, Any], fed: Federation) -> tuple[str, ...]:
    """The site names a checkpoint was trained on (recorded by ``save_server``; else its site folders)."""
    record = meta.get("training", {}).get("federated", {})
    if record.get("trained_on") is not None:
        return tuple(str(n) for n in record["trained_on"])
    by_dir = dict(zip(fed.site_dirs, (s.name for s in fed.sites), strict=True))
    return tuple(by_dir.get(str(d), str(d)) for d in record.get("sites", []))


def score_seed(fed: Federation, seed_dir: Path, *, baselines: bool, leave_one_out: bool) -> list[Score]:
    """Score one seed's models (see the module docstring) on the sites' test splits.

    Args:
        fed: the :class:`pipelines.federation.Federation` of all sites (its ``config.seed`` is the seed).
        seed_dir: the seed's folder (``federated.pt``, ``local_<site>.pt``, ``heldout_<site>/`` ...).
        baselines: score the local-only and pooled models.
        leave_one_out: score the held-out federations.

    Returns:
        :class:`continual.crosssite.Score` rows. A model is never scored as ``heldout`` or
        ``local_unseen`` on a site its checkpoint says it trained on (``Score`` refuses).
    """
    from continual.crosssite import Score, adapt_bn_statistics
    from medimg.models import load_checkpoint
    from pipelines.training import predict_dataset

    names = [s.name for s in fed.sites]
    tests = {s.name: s.test for s in fed.sites}
    shared_bn = _shared_bn(fed)
    scores: list[Score] = []

    def add(path: Path, model_name: str, role: str, bn: str, sites: Sequence[str]) -> None:
        model, meta = load_checkpoint(path, pipeline=fed.pipeline.name)
        trained = _trained_on(meta, fed)
        for site in sites:
            scored = model
            if bn == "tta":
                scored = copy.deepcopy(model)
                adapt_bn_statistics(scored, fed.unlabelled[site])
            labels, probs = predict_dataset(scored, tests[site])
            scores.append(Score(seed=fed.config.seed, model=model_name, role=role, bn=bn, site=site,
                                y_true=labels, y_prob=probs.astype(np.float64), trained_on=trained))  # fmt: skip

    add(seed_dir / "federated.pt", "federated", "federated_own", shared_bn, names)
    if fed.config.bn_policy == "local":
        for k in names:
            add(seed_dir / f"federated_{k}.pt", f"federated_{k}", "personalized_own", "site_own", [k])
    if baselines:
        frozen = fed.config.bn_policy == "global_frozen"  # the baselines train under the same BN policy
        own_bn, unseen_bn = (shared_bn, shared_bn) if frozen else ("site_own", "training_site")
        for k in names:
            others = [h for h in names if h != k]
            add(seed_dir / f"local_{k}.pt", f"local_{k}", "local_own", own_bn, [k])
            add(seed_dir / f"local_{k}.pt", f"local_{k}", "local_unseen", unseen_bn, others)
            add(seed_dir / f"local_{k}.pt", f"local_{k}", "local_unseen", "tta", others)
        add(seed_dir / "pooled.pt", "pooled", "pooled_own", shared_bn if frozen else "pooled", names)
    if leave_one_out:
        for h in names:
            path = seed_dir / f"heldout_{h}" / "federated.pt"
            add(path, f"heldout_{h}", "heldout", shared_bn, [h])
            add(path, f"heldout_{h}", "heldout", "tta", [h])
    return scores


def _rows(fed: Federation, scores: Sequence[Score]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``cross_site.csv`` rows (metrics per score) and ``predictions.csv`` rows (per image)."""
    rows, predictions = [], []
    for s in scores:
        metrics = fed.pipeline.metrics(s.y_true, s.y_prob)
        rows.append({"seed": s.seed, "model": s.model, "role": s.role, "bn": s.bn, "site": s.site,
                     "trained_on": "+".join(s.trained_on), "n_test": len(s.y_true), **metrics})  # fmt: skip
        groups = fed.test_groups[s.site]
        for i, (label, prob) in enumerate(zip(s.y_true, s.y_prob, strict=True)):
            row = {"seed": s.seed, "model": s.model, "bn": s.bn, "site": s.site, "index": i,
                   "patient_id": groups[i], "label": int(label)}  # fmt: skip
            row.update({f"prob_{j}": float(p) for j, p in enumerate(prob)})
            predictions.append(row)
    return rows, predictions


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _claim(result: Mapping[str, Any], claim: str, terms: Mapping[str, str]) -> dict[str, Any] | None:
    """A claim of :func:`continual.crosssite.summarize` with the means it compares (and their intervals)."""
    if claim not in result["claims"]:
        return None
    out = dict(result["claims"][claim])
    for name, key in terms.items():
        out[name] = result["quantities"][key]
    return out


def build_summary(
    fed: Federation, scores: Sequence[Score], *, settings: Mapping[str, Any], n_boot: int = 1000
) -> dict[str, Any]:
    """The ``summary.json`` content: claims with 95% intervals and statuses, quantities, the mean matrix.

    ``local_gain`` / ``generalizability_gain`` / ``generalizability_gain_tta``: ``value`` (absolute
    difference of the metric), ``ci95``, ``status`` (``met`` / ``not shown`` / ``reversed``),
    ``relative`` and ``relative_ci95`` (divided by the local-only term), and the two terms compared;
    None where the run lacks the models (no baselines; no ``--leave-one-out``).
    ``personalized_own_site`` (FedBN only) and ``pooled_own_site``: means with intervals.
    """
    from continual.crosssite import BN_SOURCES, ROLES, summarize

    monitor = fed.config.monitor

    def score_fn(y: np.ndarray, p: np.ndarray) -> float:
        return float(fed.pipeline.metrics(y, p)[monitor])

    result = summarize(scores, fed.test_groups, score_fn, n_boot=n_boot, seed=0)
    q = result["quantities"]
    shared_bn = _shared_bn(fed)
    fedbn = fed.config.bn_policy == "local"
    summary: dict[str, Any] = {
        "metric": monitor,
        "sites": [s.name for s in fed.sites],
        "seeds": list(settings.get("seeds", [])),
        "bn_policy": fed.config.bn_policy,
        "local_gain": _claim(result, "local_gain", {"federated_own": "federated_own", "local_own": "local_own"}),
        "generalizability_gain": _claim(
            result, "generalizability_gain", {"federated_heldout": "heldout", "local_unseen": "local_unseen"}
        ),
        "generalizability_gain_tta": _claim(
            result,
            "generalizability_gain_tta",
            {"federated_heldout": "heldout_tta", "local_unseen": "local_unseen_tta"},
        ),
        "bn_compared": _bn_compared(shared_bn, fedbn),
        "personalized_own_site": q["personalized_own"] if fedbn else None,
        "pooled_own_site": q["pooled_own"] if math.isfinite(q["pooled_own"]["value"]) else None,
        "quantities": q,
        "per_seed": result["per_seed"],
        "bootstrap": _bootstrap_settings(n_boot),
        "matrix": _mean_matrix(scores, score_fn),
        "roles": ROLES,
        "bn_sources": BN_SOURCES,
        "paper": PAPER,
        "settings": {k: v for k, v in settings.items() if k != "cache_dir"},
    }
    summary.update(_summary_notes(settings, undefined_gain=summary["generalizability_gain"] is None))
    _mark_data_warnings(summary, fed.data_warnings)
    return summary


def _mark_data_warnings(summary: dict[str, Any], warnings: Sequence[str]) -> None:
    """``data_warnings`` in the summary, and a ``warning`` on every gain averaged over the sites."""
    summary["data_warnings"] = list(warnings)
    if not warnings:
        return
    for key in ("local_gain", "generalizability_gain", "generalizability_gain_tta"):
        if summary.get(key):
            summary[key]["warning"] = "; ".join(warnings)


def _shared_bn(fed: Federation) -> str:
    """The BN statistics of the federation's shared model: the frozen initial ones, or the federation's mean."""
    return "initial_frozen" if fed.config.bn_policy == "global_frozen" else "federation_mean"


def _bn_compared(shared_bn: str, fedbn: bool) -> dict[str, dict[str, str]]:
    """For each claim, the BN statistics each side of the comparison used."""
    return {
        "local_gain": {
            "federated": "site_own (personalized)" if fedbn else shared_bn,
            "local": "initial_frozen" if shared_bn == "initial_frozen" else "site_own",
        },
        "generalizability_gain": {
            "federated_heldout": shared_bn,
            "local_unseen": shared_bn if shared_bn == "initial_frozen" else "training_site",
        },
        "generalizability_gain_tta": {"federated_heldout": "tta", "local_unseen": "tta"},
    }


def _bootstrap_settings(n_boot: int) -> dict[str, Any]:
    """How the intervals were made (the ``bootstrap`` entry of ``summary.json``)."""
    return {
        "replicates": n_boot,
        "seed": 0,
        "confidence": 0.95,
        "resampled": "the seeds (with replacement), and at every site the test split's patients/exams "
        "(with replacement, all images of a patient together, the same draw for every model and seed)",
        "status": "met: the interval lies above 0; reversed: below 0; not shown: it includes 0",
    }


def _mean_matrix(
    scores: Sequence[Score], score_fn: Callable[[np.ndarray, np.ndarray], float]
) -> dict[str, dict[str, float]]:
    """``{"<model> [<bn>]": {site: mean score over the seeds (NaNs left out)}}``."""
    matrix: dict[str, dict[str, list[float]]] = {}
    for s in scores:
        matrix.setdefault(f"{s.model} [{s.bn}]", {}).setdefault(s.site, []).append(score_fn(s.y_true, s.y_prob))
    return {label: {site: finite_mean(v) for site, v in row.items()} for label, row in matrix.items()}


def _summary_notes(settings: Mapping[str, Any], *, undefined_gain: bool) -> dict[str, str]:
    """``initial_weights_note`` (a held-out site the initial weights may have seen) and ``generalizability_note``
    (why the generalization gain is undefined), where they apply."""
    notes = {}
    if settings.get("weights") and settings.get("leave_one_out"):
        notes["initial_weights_note"] = (
            f"every model started from {settings['weights']} (trained on "
            f"{settings.get('weights_data') or 'data not recorded in it'}): a held-out site is unseen by this "
            "run's training only; if those weights learned from a held-out institution, its score there "
            "overstates generalization"
        )
    if undefined_gain:
        ran = settings.get("leave_one_out") and settings.get("baselines", True)
        notes["generalizability_note"] = (
            "undefined on these test splits (no held-out site where both sides have a defined score)"
            if ran
            else "needs --leave-one-out and the local-only baselines: only models scored on sites they never "
            "trained on count"
        )
    return notes


def write_outputs(
    fed: Federation, scores: Sequence[Score], out: Path, *, settings: Mapping[str, Any], n_boot: int = 1000
) -> dict[str, Any]:
    """``OUT/cross_site.csv``, ``predictions.csv``, ``summary.json`` and ``report.html``; return the summary."""
    from continual.report import write_federated_report

    rows, predictions = _rows(fed, scores)
    write_csv(out / "cross_site.csv", rows, _columns(rows))
    write_csv(out / "predictions.csv", predictions, _columns(predictions))
    summary = build_summary(fed, scores, settings=settings, n_boot=n_boot)
    write_json(out / "summary.json", summary)
    seeds = list(settings.get("seeds", []))
    rounds = out / f"seed{seeds[0]}" / "rounds.csv" if seeds else out / "rounds.csv"
    write_federated_report(out, summary, rows, rounds_csv=rounds if rounds.is_file() else None)
    return summary


def _ci(entry: Mapping[str, Any], key: str = "value", ci: str = "ci95", fmt: str = "{:+.3f}") -> str:
    def text(value: Any) -> str:
        return fmt.format(value) if value is not None and math.isfinite(float(value)) else "n/a"

    lo, hi = entry.get(ci) or [math.nan, math.nan]
    return f"{text(entry[key])} [{text(lo)}, {text(hi)}]"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """Plain-text lines for the terminal: each claim with its interval, status, BN and the paper's figure."""
    bn = summary.get("bn_compared", {})
    lines = [f"{summary['metric']}, seeds {summary.get('seeds')}, 95% intervals (bootstrap over seeds and test exams):"]
    specs = (
        ("local_gain", "local gain, own test site", "federated_own", "local_own", "paper +6.3%"),
        ("generalizability_gain", "generalization, sites never trained on", "federated_heldout", "local_unseen",
         "paper +45.8%"),
        ("generalizability_gain_tta", "generalization with test-time BN", "federated_heldout", "local_unseen", ""),
    )  # fmt: skip
    for key, label, fl, local, paper in specs:
        entry = summary.get(key)
        if not entry:
            continue
        used = " / ".join(map(str, bn.get(key, {}).values()))
        relative = _ci(entry, "relative", "relative_ci95", "{:+.1%}") + (f"; {paper}" if paper else "")
        lines.append(
            f"  {label}: federated {entry[fl]['value']:.3f} vs local-only {entry[local]['value']:.3f} [BN {used}]: "
            f"{_ci(entry)} ({relative}): {entry['status']}"
        )
    for warning in summary.get("data_warnings", []):
        lines.append(f"  warning: {warning}")
    if summary.get("generalizability_note"):
        lines.append(f"  generalization gain: {summary['generalizability_note']}")
    if summary.get("initial_weights_note"):
        lines.append(f"  note: {summary['initial_weights_note']}")
    if summary.get("personalized_own_site"):
        lines.append(
            "  personalized own-site score (FedBN, each site with its own BN; not generalization): "
            + _ci(summary["personalized_own_site"], fmt="{:.3f}")
        )
    return lines
