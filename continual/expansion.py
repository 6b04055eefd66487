"""Domain expansion arms: adapt a site-A classifier to site B (docs/methods/domain-expansion.md).

Every arm starts from a copy of ``model_A`` and fine-tunes it on site B's data with the shared
training loop (:func:`medimg.training.train_classifier`: seeded, resumable, best checkpoint by the
validation metric on B, never on A; only ``joint``, below, trains and selects on both). What
differs is declared in :data:`ARMS`:

============================  ===========  ==========  ====  ====
arm                           trains       BN stats    EWC   LwF
============================  ===========  ==========  ====  ====
``old-only``                  nothing      A           -     -
``finetune``                  all          B (train)   -     -
``finetune-gbn``              all          A (frozen)  -     -
``ewc``                       all          B (train)   yes   -
``ewc-gbn`` (proposed)        all          A (frozen)  yes   -
``bn-finetune``               BN affine    B (train)   -     -
``bn-finetune-gbn``           BN affine    A (frozen)  -     -
``bn-ewc``                    BN affine    B (train)   yes   -
``bn-ewc-gbn``                BN affine    A (frozen)  yes   -
``lwf``                       all          B (train)   -     yes
``joint`` (pooled reference)  all          A+B         -     -
============================  ===========  ==========  ====  ====

"Frozen" BN statistics are site A's running statistics kept bit for bit: only the BN modules are
in eval mode during fine-tuning (dropout stays active), re-applied whenever the loop calls
``train()``. The EWC penalty is ``(lambda / 2) * sum_i F_i (theta_i - theta_A,i)^2`` with the
Fisher diagonal estimated at site A (:mod:`continual.ewc`). The post-conditions of each arm are
asserted after training.

``joint`` is joint training on the pooled data, the reference that continual-learning papers
compare against; it breaks the premise that A's images stay at A. Its rule, so that it answers
"how well can one model serve both sites": it starts from ``model_A`` like every arm; one epoch is
one pass over A's and B's training splits together, so each site gets as many epochs as B gets in
the other arms (and the run takes ``(|A| + |B|) / |B|`` times their optimization steps, with the
same cosine schedule over the epochs); the epoch kept is the one with the best *unweighted mean of
the two sites' validation metrics* (each site's metric computed on its own validation split;
``metrics.csv`` also has them as ``new_<metric>`` and ``old_<metric>``). It is a reference for
both sites together, not an upper bound on either site alone: pooling dilutes B's class mix with
A's and the kept epoch must serve A too, so naive fine-tuning can score higher on B.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARMS", "SELECTIONS", "ArmSpec", "ce_penalty_metric", "expand", "two_site_metric"]

#: How :func:`expand` picks the epoch it keeps (never with old-site data).
SELECTIONS: tuple[str, ...] = ("metric", "ce_penalty")


@dataclass(frozen=True)
class ArmSpec:
    """What one arm trains and keeps (see the module table)."""

    train: bool = True
    trainable: str = "all"
    freeze_bn_stats: bool = False
    ewc: bool = False
    lwf: bool = False
    joint: bool = False


ARMS: dict[str, ArmSpec] = {
    "old-only": ArmSpec(train=False),
    "finetune": ArmSpec(),
    "finetune-gbn": ArmSpec(freeze_bn_stats=True),
    "ewc": ArmSpec(ewc=True),
    "ewc-gbn": ArmSpec(freeze_bn_stats=True, ewc=True),
    "bn-finetune": ArmSpec(trainable="bn_affine"),
    "bn-finetune-gbn": ArmSpec(trainable="bn_affine", freeze_bn_stats=True),
    "bn-ewc": ArmSpec(trainable="bn_affine", ewc=True),
    "bn-ewc-gbn": ArmSpec(trainable="bn_affine", freeze_bn_stats=True, ewc=True),
    "lwf": ArmSpec(lwf=True),
    "joint": ArmSpec(joint=True),
}


#: What a resumed arm must agree on with the ``last.pt`` it continues (beside the loop's own keys).
_RESUME_KEYS = ("arm", "lambda", "trainable", "freeze_bn_stats", "select", "validation")


def _check_resume(out_dir: Path, wanted: Mapping[str, Any]) -> None:
    """Refuse to continue a ``last.pt`` written by another arm or another epoch-selection rule."""
    from medimg.models import read_checkpoint

    last = out_dir / "last.pt"
    if not last.is_file():
        return
    saved = read_checkpoint(last, map_location="cpu")["meta"].get("training", {}).get("continual", {})
    changed = [k for k in _RESUME_KEYS if saved.get(k) != wanted.get(k)]
    if changed:
        detail = ", ".join(f"{k}={saved.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
        raise ValueError(f"{last} was written with other settings ({detail}); use another out_dir")


def _check_arm(arm: str, select: str, *, fisher: Any, train_a: Any, val_a: Any) -> ArmSpec:
    """The arm's spec, after refusing settings it cannot run with (see :func:`expand`'s Raises)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")
    if select not in SELECTIONS:
        raise ValueError(f"unknown selection {select!r}; choose from {list(SELECTIONS)}")
    spec = ARMS[arm]
    if spec.ewc and fisher is None:
        raise ValueError(f"arm {arm!r} needs the Fisher estimated at the old site")
    if spec.joint and (train_a is None or val_a is None):
        raise ValueError("the joint arm needs the old site's training and validation data")
    if val_a is not None and not spec.joint:
        raise ValueError(f"arm {arm!r} never selects on old-site data: val_a is for the joint arm only")
    return spec


def _extra_loss(
    model: torch.nn.Module,
    model_a: torch.nn.Module,
    spec: ArmSpec,
    fisher: Any,
    lam: float,
    lwf_temperature: float,
    lwf_alpha: float,
) -> tuple[Callable[[Any], torch.Tensor] | None, list[Any], Any]:
    """The arm's loss beside the cross-entropy: ``(extra_loss or None, forward hooks to remove, EWC penalty or None)``.

    ``extra_loss(batch)`` is the sum of the arm's terms (EWC penalty, LwF distillation of the
    last forward pass), for :func:`medimg.training.train_classifier`'s ``extra_loss``.
    """
    terms: list[Callable[[Any], torch.Tensor]] = []
    hooks: list[Any] = []
    penalty = None
    if spec.ewc:
        from continual.ewc import EWCPenalty

        penalty = EWCPenalty(model, fisher, lam)
        terms.append(lambda batch: penalty())
    if spec.lwf:
        from continual.lwf import LwFLoss

        distill = LwFLoss(model_a, temperature=lwf_temperature, alpha=lwf_alpha)
        captured: dict[str, torch.Tensor] = {}
        hooks.append(
            model.register_forward_hook(lambda _m, inputs, output: captured.update(x=inputs[0], logits=output))
        )
        terms.append(lambda batch: distill(captured["logits"], captured["x"]))
    if not terms:
        return None, hooks, penalty
    return lambda batch: sum(term(batch) for term in terms), hooks, penalty  # type: ignore[return-value]


def _selection(
    select: str,
    spec: ArmSpec,
    metric_fn: Callable[..., Mapping[str, float]],
    config: Any,
    penalty: Any,
    val_b: Any,
    val_a: Any,
) -> tuple[Callable[..., Mapping[str, float]], Any, Any]:
    """``(metric_fn, config, validation data)`` that make the loop keep the epoch ``select`` asks for."""
    if select == "ce_penalty":
        import dataclasses

        metric_fn = ce_penalty_metric(metric_fn, penalty)
        config = dataclasses.replace(config, monitor="neg_ce_penalty")
    if spec.joint:
        from torch.utils.data import ConcatDataset

        metric_fn = two_site_metric(metric_fn, len(val_b))
        val_b = ConcatDataset([val_b, val_a])
    return metric_fn, config, val_b


def _arm_meta(
    checkpoint_meta: Mapping[str, Any],
    arm: str,
    spec: ArmSpec,
    lam: float,
    fisher: Any,
    lwf: dict[str, float],
    select: str,
) -> dict[str, Any]:
    """``checkpoint_meta`` with the arm's settings under ``training.continual``."""
    meta = copy.deepcopy(dict(checkpoint_meta))
    meta.setdefault("training", {})["continual"] = {
        "arm": arm,
        "lambda": lam,
        "trainable": spec.trainable,
        "freeze_bn_stats": spec.freeze_bn_stats,
        "fisher": dict(getattr(fisher, "meta", {}) or {}) if spec.ewc else None,
        "lwf": lwf if spec.lwf else None,
        "select": select,
        "validation": "mean of new and old site" if spec.joint else "new site",
    }
    return meta


def _load_best(model: torch.nn.Module, result: Any) -> None:
    """Load the best epoch's weights (if the loop kept one) and put the model in eval mode."""
    best = result.best_checkpoint if result.best_checkpoint and Path(result.best_checkpoint).is_file() else None
    if best is not None:
        from medimg.models import read_checkpoint

        model.load_state_dict(read_checkpoint(best)["state_dict"])
    model.eval()


def expand(
    model_a: torch.nn.Module,
    train_b: Any,
    val_b: Any,
    *,
    arm: str,
    out_dir: str | os.PathLike[str],
    config: Any,
    metric_fn: Callable[..., Mapping[str, float]],
    checkpoint_meta: Mapping[str, Any],
    fisher: Any = None,
    lam: float = 0.0,
    train_a: Any = None,
    val_a: Any = None,
    lwf_temperature: float = 2.0,
    lwf_alpha: float = 1.0,
    select: str = "metric",
    quiet: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Adapt a copy of ``model_a`` to site B with one arm; returns ``(model, info)``.

    Args:
        model_a: the site-A classifier (not modified).
        train_b, val_b: site B's training and validation datasets (``{"image", "label"}`` items).
        arm: a key of :data:`ARMS`.
        out_dir: run folder of the shared training loop (``best.pt``, ``last.pt``, ``metrics.csv``).
        config: :class:`medimg.training.TrainConfig` (its ``monitor`` picks the best epoch on B).
        metric_fn: ``(y_true, y_prob) -> metrics`` for the validation on B.
        checkpoint_meta: checkpoint metadata for ``model_a``'s architecture; the arm, lambda and
            Fisher metadata are added under ``training.continual``.
        fisher: :class:`continual.ewc.Fisher` estimated at site A (EWC arms).
        lam: EWC lambda (EWC arms).
        train_a: site A's training data (``joint`` only; ignored by the other arms).
        val_a: site A's validation data (``joint`` only, which needs it: its epoch is chosen by the
            mean of both sites' validation metrics; any other arm refuses it).
        lwf_temperature, lwf_alpha: Learning-without-Forgetting distillation settings (``lwf``).
        select: which epoch is kept: ``"metric"`` (highest ``config.monitor`` on B's validation
            split) or ``"ce_penalty"`` (lowest validation cross-entropy on B plus the EWC penalty,
            the paper code's rule; recorded as ``neg_ce_penalty``). For
            ``joint`` either is the mean of the two sites' values (:func:`two_site_metric`).
        quiet: no progress output.

    Returns:
        The adapted model (the best epoch's weights, eval mode) and ``info`` (arm, lambda, best
        epoch and value, post-conditions checked).

    Raises:
        ValueError: unknown arm, an EWC arm without a Fisher, ``joint`` without ``train_a`` or
            ``val_a``, ``val_a`` for another arm (only ``joint`` may select on old-site data).
        AssertionError: a post-condition of the arm failed (see :func:`continual.bn.check_postconditions`).
    """
    from torch.utils.data import ConcatDataset

    from continual.bn import check_postconditions, freeze_bn_stats, set_trainable, snapshot_bn_stats
    from medimg.models import copy_model
    from medimg.training import train_classifier

    spec = _check_arm(arm, select, fisher=fisher, train_a=train_a, val_a=val_a)
    model = copy_model(model_a)  # its own leaf parameters, a TorchScript network's included
    info: dict[str, Any] = {"arm": arm, "lambda": float(lam) if spec.ewc else 0.0}
    if not spec.train:
        return model.eval(), {**info, "best_epoch": None, "best_value": None, "postconditions": "n/a"}

    anchor_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    anchor_bn = snapshot_bn_stats(model)
    set_trainable(model, spec.trainable)
    handle = freeze_bn_stats(model) if spec.freeze_bn_stats else None
    extra_loss, hooks, penalty = _extra_loss(model, model_a, spec, fisher, lam, lwf_temperature, lwf_alpha)
    metric_fn, config, val_data = _selection(select, spec, metric_fn, config, penalty, val_b, val_a)
    lwf = {"temperature": lwf_temperature, "alpha": lwf_alpha}
    meta = _arm_meta(checkpoint_meta, arm, spec, info["lambda"], fisher, lwf, select)
    _check_resume(Path(out_dir), meta["training"]["continual"])
    data = ConcatDataset([train_a, train_b]) if spec.joint else train_b
    try:
        result = train_classifier(
            model, data, val_data, config=config, out_dir=out_dir, metric_fn=metric_fn, checkpoint_meta=meta,
            resume=True, quiet=quiet, extra_loss=extra_loss,
        )  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
        if handle is not None:
            handle.remove()
    _load_best(model, result)
    check_postconditions(
        model, anchor_params, anchor_bn, freeze_bn_stats=spec.freeze_bn_stats and not spec.joint,
        trainable=spec.trainable,
    )  # fmt: skip
    return model, {
        **info,
        "best_epoch": result.best_epoch,
        "best_value": result.best_value,
        "postconditions": "checked",
    }


def ce_penalty_metric(metric_fn: Callable[..., Mapping[str, float]], penalty: Any) -> Callable[..., dict[str, float]]:
    """``metric_fn`` plus ``neg_ce_penalty`` = -(mean validation cross-entropy + EWC penalty at the
    current weights): the training loop keeps its highest value, i.e. the lowest CE + penalty."""
    import numpy as np

    def metrics(y_true: Any, y_prob: Any) -> dict[str, float]:
        out = dict(metric_fn(y_true, y_prob))
        y = np.asarray(y_true, dtype=np.int64)
        prob = np.asarray(y_prob, dtype=np.float64)
        ce = float(-np.mean(np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, 1.0))))
        extra = float(penalty().detach()) if penalty is not None else 0.0
        out["neg_ce_penalty"] = -(ce + extra)
        return out

    return metrics


def two_site_metric(metric_fn: Callable[..., Mapping[str, float]], n_new: int) -> Callable[..., dict[str, float]]:
    """The joint arm's validation metrics: ``metric_fn`` on each site's part of a concatenated
    validation set (the new site's first ``n_new`` items, then the old site's), and their mean.

    Args:
        metric_fn: ``(y_true, y_prob) -> {name: value}`` for one site.
        n_new: number of leading items that belong to the new site.

    Returns:
        A ``metric_fn`` for the concatenation returning, for every name both sites report,
        ``name`` = the unweighted mean of the two sites' values (NaN when either is NaN: a site
        cannot be skipped), ``new_<name>`` and ``old_<name>``.

    Raises:
        ValueError (when called): either site's part is empty.
    """
    import numpy as np

    def metrics(y_true: Any, y_prob: Any) -> dict[str, float]:
        y, prob = np.asarray(y_true), np.asarray(y_prob)
        if not 0 < n_new < len(y):
            raise ValueError(f"{len(y)} validation items cannot hold {n_new} new-site items and at least one old-site")
        new, old = dict(metric_fn(y[:n_new], prob[:n_new])), dict(metric_fn(y[n_new:], prob[n_new:]))
        out = {name: (float(new[name]) + float(old[name])) / 2 for name in new if name in old}
        out.update({f"new_{name}": float(value) for name, value in new.items()})
        out.update({f"old_{name}": float(value) for name, value in old.items()})
        return out

    return metrics
