"""Domain expansion arms: adapt a site-A classifier to site B (spec ``continual.md`` §2.2, §2.5).

Every arm starts from a copy of ``model_A`` and fine-tunes it on site B's data with the shared
training loop (:func:`medimg.training.train_classifier`: seeded, resumable, best checkpoint by the
validation metric on B, never on A). What differs is declared in :data:`ARMS`:

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
``joint`` (upper bound)       all          A+B         -     -
============================  ===========  ==========  ====  ====

"Frozen" BN statistics are site A's running statistics kept bit for bit: only the BN modules are
in eval mode during fine-tuning (dropout stays active), re-applied whenever the loop calls
``train()``. The EWC penalty is ``(lambda / 2) * sum_i F_i (theta_i - theta_A,i)^2`` with the
Fisher diagonal estimated at site A (:mod:`continual.ewc`). ``joint`` pools A's and B's training
data (it breaks the premise that A's images stay at A: an upper bound only). The post-conditions of
§2.2 step 6 are asserted after training.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARMS", "SELECTIONS", "ArmSpec", "expand"]

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
        train_a: site A's training data (``joint`` only).
        lwf_temperature, lwf_alpha: Learning-without-Forgetting distillation settings (``lwf``).
        select: which epoch is kept: ``"metric"`` (highest ``config.monitor`` on B's validation
            split) or ``"ce_penalty"`` (lowest validation cross-entropy on B plus the EWC penalty,
            the paper code's rule, spec §2.2 step 5; recorded as ``neg_ce_penalty``).
        quiet: no progress output.

    Returns:
        The adapted model (the best epoch's weights, eval mode) and ``info`` (arm, lambda, best
        epoch and value, post-conditions checked).

    Raises:
        ValueError: unknown arm, an EWC arm without a Fisher, ``joint`` without ``train_a``.
        AssertionError: a post-condition of spec §2.2 step 6 failed.
    """
    from torch.utils.data import ConcatDataset

    from continual.bn import check_postconditions, freeze_bn_stats, set_trainable, snapshot_bn_stats
    from medimg.training import train_classifier

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {sorted(ARMS)}")
    if select not in SELECTIONS:
        raise ValueError(f"unknown selection {select!r}; choose from {list(SELECTIONS)}")
    spec = ARMS[arm]
    if spec.ewc and fisher is None:
        raise ValueError(f"arm {arm!r} needs the Fisher estimated at the old site")
    if spec.joint and train_a is None:
        raise ValueError("the joint arm needs the old site's training data")
    model = copy.deepcopy(model_a)
    info: dict[str, Any] = {"arm": arm, "lambda": float(lam) if spec.ewc else 0.0}
    if not spec.train:
        return model.eval(), {**info, "best_epoch": None, "best_value": None, "postconditions": "n/a"}

    anchor_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    anchor_bn = snapshot_bn_stats(model)
    set_trainable(model, spec.trainable)
    handle = freeze_bn_stats(model) if spec.freeze_bn_stats else None
    terms: list[Callable[[Any], torch.Tensor]] = []
    hooks: list[Any] = []
    penalty = None
    if spec.ewc:
        from continual.ewc import EWCPenalty

        penalty = EWCPenalty(model, fisher, lam)
        terms.append(lambda batch: penalty())
    if select == "ce_penalty":
        import dataclasses

        metric_fn = _ce_penalty_metric(metric_fn, penalty)
        config = dataclasses.replace(config, monitor="neg_ce_penalty")
    if spec.lwf:
        from continual.lwf import LwFLoss

        distill = LwFLoss(model_a, temperature=lwf_temperature, alpha=lwf_alpha)
        captured: dict[str, torch.Tensor] = {}
        hooks.append(
            model.register_forward_hook(lambda _m, inputs, output: captured.update(x=inputs[0], logits=output))
        )
        terms.append(lambda batch: distill(captured["logits"], captured["x"]))
    if terms:
        model.auxiliary_loss = lambda batch: sum(term(batch) for term in terms)  # type: ignore[assignment]
    meta = copy.deepcopy(dict(checkpoint_meta))
    meta.setdefault("training", {})["continual"] = {
        "arm": arm,
        "lambda": info["lambda"],
        "trainable": spec.trainable,
        "freeze_bn_stats": spec.freeze_bn_stats,
        "fisher": dict(getattr(fisher, "meta", {}) or {}) if spec.ewc else None,
        "lwf": {"temperature": lwf_temperature, "alpha": lwf_alpha} if spec.lwf else None,
        "select": select,
    }
    data = ConcatDataset([train_a, train_b]) if spec.joint else train_b
    try:
        result = train_classifier(
            model,
            data,
            val_b,
            config=config,
            out_dir=out_dir,
            metric_fn=metric_fn,
            checkpoint_meta=meta,
            resume=True,
            quiet=quiet,
        )
    finally:
        for hook in hooks:
            hook.remove()
        if handle is not None:
            handle.remove()
        if terms:
            del model.auxiliary_loss
    best = result.best_checkpoint if result.best_checkpoint and Path(result.best_checkpoint).is_file() else None
    if best is not None:
        from medimg.models import read_checkpoint

        model.load_state_dict(read_checkpoint(best)["state_dict"])
    model.eval()
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


def _ce_penalty_metric(metric_fn: Callable[..., Mapping[str, float]], penalty: Any) -> Callable[..., dict[str, float]]:
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
