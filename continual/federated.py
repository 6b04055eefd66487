"""Federated training across institutions: the engine-agnostic core (docs/methods/federated-bn.md).

Everything a federated engine needs from medimg, as plain torch, so that it can be unit-tested
without an engine and driven by any of them (:mod:`continual.flower` adapts it to Flower):

* :func:`aggregate_states` -- the server step: the example-weighted mean of the clients' state
  dicts (FedAvg), computed in float64 and cast back to every entry's dtype, so that integer
  buffers such as BN's ``num_batches_tracked`` stay integers (Flower's own FedAvg turns them into
  float64). The batch-norm policy decides what happens to BN entries:

  ==================  ===============================================================  ===========
  policy              clients train with                                               server
  ==================  ===============================================================  ===========
  ``average``         the global model's BN (statistics updated locally, as usual)     averages all
  ``local`` (FedBN)   their own BN parameters and statistics, kept from round to round  averages all*
  ``global_frozen``   the initial model's BN statistics, frozen (eval-mode BN only)     keeps stats
  ==================  ===============================================================  ===========

  (*) under ``local`` the clients ignore the BN entries they receive; the server's average only
  gives the global checkpoint usable BN for sites outside the federation. ``global_frozen`` is
  the link to the domain-expansion method: the old site's population statistics stay bit
  for bit, only BN's gamma/beta are averaged.
* :class:`FedProxTerm` -- the client-side proximal term ``(mu / 2) * ||theta - theta_global||^2``
  (FedProx; Flower's server only sends ``proximal-mu``).
* :func:`client_update` -- one site's local training for E epochs from the global state, on the
  shared training loop (:func:`medimg.training.train_classifier`: seeded, augmented), returning
  the last epoch's state, the number of training examples (the FedAvg weight ``n_k``) and metrics.
* :class:`ServerState` -- the global model across rounds: aggregation, per-round validation
  (example-weighted mean of each site's validation metric on the global model) and the best
  global model kept.
* :func:`simulate_inprocess` -- the whole protocol in one process without an engine (reference
  implementation, deterministic, fast enough for tests).

The cross-site evaluation (local gain, generalization to held-out sites, intervals) is
:mod:`continual.crosssite`.

Generic: takes models, datasets and callables; imports nothing from ``pipelines``.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BN_POLICIES",
    "ClientResult",
    "FedConfig",
    "FedProxTerm",
    "Site",
    "ServerState",
    "aggregate_states",
    "apply_local_bn",
    "bn_state_keys",
    "client_update",
    "round_seed",
    "simulate_inprocess",
]

BN_POLICIES: tuple[str, ...] = ("average", "local", "global_frozen")
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class FedConfig:
    """Settings of a federation (defaults: the 2022 challenge reference's, except the optimizer; see ``lr``).

    Attributes:
        rounds: communication rounds R.
        local_epochs: local epochs E per round.
        batch_size: local batch size.
        lr: peak learning rate of the shared loop's AdamW (the 2022 challenge reference used SGD
            with momentum 0.9 at 2e-3; medimg's loop is AdamW everywhere). The optimizer state is
            fresh every round, as in the reference.
        proximal_mu: FedProx's mu (0 = FedAvg).
        bn_policy: one of :data:`BN_POLICIES`.
        seed: base seed; round ``r`` at site ``k`` trains with :func:`round_seed`.
        monitor: the validation metric that picks the best global model (higher is better).
    """

    rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    proximal_mu: float = 0.0
    bn_policy: str = "average"
    seed: int = 0
    monitor: str = "kappa_linear"

    def __post_init__(self) -> None:
        if self.bn_policy not in BN_POLICIES:
            raise ValueError(f"unknown BN policy {self.bn_policy!r}; choose from {list(BN_POLICIES)}")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("rounds, local_epochs and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (self.proximal_mu >= 0 and math.isfinite(self.proximal_mu)):
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")


@dataclass
class Site:
    """One institution's data: map-style datasets of ``{"image", "label"}`` items."""

    name: str
    train: Any
    val: Any
    test: Any = None


@dataclass
class ClientResult:
    """What a client sends back after a round: its state, FedAvg weight and metrics."""

    state: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def round_seed(seed: int, server_round: int, site_index: int) -> int:
    """The local-training seed of round ``server_round`` at site ``site_index`` (distinct per pair)."""
    return int(seed) * 1_000_003 + int(server_round) * 1009 + int(site_index)


def bn_state_keys(model: torch.nn.Module) -> dict[str, set[str]]:
    """State-dict keys of the BN layers: ``{"affine": gamma/beta keys, "stats": running stats keys}``."""
    from continual.bn import bn_modules

    affine: set[str] = set()
    stats: set[str] = set()
    for name, module in bn_modules(model).items():
        prefix = f"{name}." if name else ""
        for pname, p in module.named_parameters(recurse=False):
            if p is not None:
                affine.add(prefix + pname)
        for bname, b in module.named_buffers(recurse=False):
            if b is not None and bname in _BN_STATS:
                stats.add(prefix + bname)
    return {"affine": affine, "stats": stats}


def aggregate_states(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    bn_policy: str = "average",
    bn_keys: Mapping[str, set[str]] | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Example-weighted mean of state dicts (FedAvg), dtype-preserving; see the module table.

    Args:
        states: the clients' state dicts (same keys, shapes and dtypes).
        weights: FedAvg weights ``n_k`` (e.g. local training examples), positive.
        bn_policy: one of :data:`BN_POLICIES`. ``global_frozen`` copies the BN statistics from
            ``reference`` instead of averaging them.
        bn_keys: :func:`bn_state_keys` of the model (needed by ``global_frozen``).
        reference: the global state sent this round (needed by ``global_frozen``).

    Returns:
        ``sum_k n_k state_k / sum_k n_k`` per entry, in float64 then cast back: floating entries
        keep their dtype; integer and boolean entries are rounded to the nearest integer and keep
        theirs.

    Raises:
        ValueError: no states, weights not positive or of another length, keys/shapes/dtypes that
            differ between clients, ``global_frozen`` without ``bn_keys`` and ``reference``.
    """
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"unknown BN policy {bn_policy!r}; choose from {list(BN_POLICIES)}")
    if not states:
        raise ValueError("nothing to aggregate: no client states")
    if len(weights) != len(states):
        raise ValueError(f"{len(weights)} weights for {len(states)} states")
    w = [float(x) for x in weights]
    if not all(math.isfinite(x) and x > 0 for x in w):
        raise ValueError(f"FedAvg weights must be positive, got {w}")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            missing = set(keys) ^ set(state)
            raise ValueError(f"client {i} sent other state keys than client 0: {sorted(missing)[:5]}")
    frozen: set[str] = set()
    if bn_policy == "global_frozen":
        if bn_keys is None or reference is None:
            raise ValueError("bn_policy='global_frozen' needs bn_keys and the reference (global) state")
        frozen = set(bn_keys["stats"])
    total = sum(w)
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        first = states[0][key]
        for i, state in enumerate(states[1:], start=1):
            t = state[key]
            if t.shape != first.shape or t.dtype != first.dtype:
                raise ValueError(
                    f"{key}: client {i} sent {tuple(t.shape)} {t.dtype}, client 0 {tuple(first.shape)} {first.dtype}"
                )
        if key in frozen:
            out[key] = reference[key].detach().clone()  # type: ignore[index]
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for wk, state in zip(w, states, strict=True):
            acc += state[key].detach().to(torch.float64) * wk
        acc /= total
        if first.is_floating_point() or first.is_complex():
            out[key] = acc.to(first.dtype)
        else:
            out[key] = torch.round(acc).to(first.dtype)
    return out


def apply_local_bn(
    state: Mapping[str, torch.Tensor], local_bn: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """``state`` with its BN entries replaced by a site's own (FedBN); unchanged when ``local_bn`` is None."""
    merged = dict(state)
    if local_bn:
        unknown = set(local_bn) - set(merged)
        if unknown:
            raise ValueError(f"local BN entries not in the model: {sorted(unknown)[:5]}")
        merged.update({k: v.detach().clone() for k, v in local_bn.items()})
    return merged


class FedProxTerm:
    """FedProx's proximal term ``(mu / 2) * sum ||theta - theta_global||^2`` over trainable parameters.

    The global parameters are copied when the term is made (at the start of a round). Callable with
    or without the batch, so it can be the ``extra_loss`` of the shared training loop.
    """

    def __init__(self, model: torch.nn.Module, mu: float) -> None:
        if not (mu >= 0 and math.isfinite(mu)):
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self._pairs = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: Any = None) -> torch.Tensor:
        if not self._pairs:
            return torch.zeros(())
        total = sum(((p - g.to(p.device)) ** 2).sum() for p, g in self._pairs)
        return 0.5 * self.mu * total  # type: ignore[return-value]


def client_update(
    model: torch.nn.Module,
    global_state: Mapping[str, torch.Tensor],
    site: Site,
    *,
    config: FedConfig,
    server_round: int,
    site_index: int,
    metric_fn: Callable[..., Mapping[str, float]],
    checkpoint_meta: Mapping[str, Any],
    local_bn: Mapping[str, torch.Tensor] | None = None,
    work_dir: str | Path | None = None,
) -> ClientResult:
    """Train ``model`` (loaded with the global state) on one site for ``config.local_epochs`` epochs.

    Args:
        model: a network of the federation's architecture (its weights are overwritten).
        global_state: the state the server sent.
        site: the site's data (training on ``train``; the loop validates on ``val``).
        config: the federation's settings (BN policy, FedProx mu, optimizer).
        server_round, site_index: pick the local seed (:func:`round_seed`).
        metric_fn: ``(y_true, y_prob) -> metrics`` containing ``config.monitor``.
        checkpoint_meta: metadata describing ``model`` for the training loop.
        local_bn: the site's own BN entries from its previous round (``local`` policy).
        work_dir: folder for the loop's per-round files (a temporary folder when None).

    Returns:
        The last epoch's state (the FedAvg protocol sends the local model after E epochs, not a
        locally selected one), ``len(site.train)`` as the FedAvg weight, and the loop's last
        validation metrics on the site's own validation split (prefixed ``local_``) plus the
        training loss.
    """
    from continual.bn import freeze_bn_stats
    from medimg.training import TrainConfig, train_classifier

    state = dict(global_state)
    if config.bn_policy == "local":
        state = apply_local_bn(state, local_bn)
    model.load_state_dict(state)
    handle = freeze_bn_stats(model) if config.bn_policy == "global_frozen" else None
    proximal = FedProxTerm(model, config.proximal_mu) if config.proximal_mu > 0 else None
    train_config = TrainConfig(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=round_seed(config.seed, server_round, site_index),
        monitor=config.monitor,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="medimg-fl-", dir=work_dir) as tmp:
            result = train_classifier(
                model,
                site.train,
                site.val,
                config=train_config,
                out_dir=tmp,
                metric_fn=metric_fn,
                checkpoint_meta=checkpoint_meta,
                resume=False,
                quiet=True,
                extra_loss=proximal,
            )
    finally:
        if handle is not None:
            handle.remove()
    last = result.history[-1] if result.history else {}
    metrics = {f"local_{k}": float(v) for k, v in last.items() if k != "epoch" and _is_number(v)}
    new_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return ClientResult(state=new_state, num_examples=len(site.train), metrics=metrics)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ServerState:
    """The global model across rounds: aggregation, validation bookkeeping and the best model kept.

    Args:
        initial_state: the round-0 global state (also the ``global_frozen`` BN statistics).
        config: the federation's settings.
        bn_keys: :func:`bn_state_keys` of the architecture.
    """

    def __init__(
        self, initial_state: Mapping[str, torch.Tensor], config: FedConfig, bn_keys: Mapping[str, set[str]]
    ) -> None:
        self.config = config
        self.bn_keys = {k: set(v) for k, v in bn_keys.items()}
        self.state = {k: v.detach().cpu().clone() for k, v in initial_state.items()}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_round: int | None = None
        self.best_value: float | None = None
        self.history: list[dict[str, Any]] = []
        #: ``local`` policy: each site's own BN entries (from its latest reply) and at the best round.
        self.site_bn: dict[str, dict[str, torch.Tensor]] = {}
        self.best_site_bn: dict[str, dict[str, torch.Tensor]] = {}

    def aggregate(self, results: Sequence[ClientResult], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Replace the global state by the weighted mean of the clients' states; return it.

        Under the ``local`` policy, ``names`` (one per result) records each site's own BN entries,
        so that the server can write each site's personalized model (global weights + its BN).
        """
        if self.config.bn_policy == "local" and names is not None:
            keys = self.bn_keys["affine"] | self.bn_keys["stats"]
            for name, result in zip(names, results, strict=True):
                self.site_bn[name] = {k: result.state[k].detach().clone() for k in keys}
        self.state = aggregate_states(
            [r.state for r in results],
            [r.num_examples for r in results],
            bn_policy=self.config.bn_policy,
            bn_keys=self.bn_keys,
            reference=self.state,
        )
        return self.state

    def record_validation(
        self, server_round: int, site_metrics: Sequence[tuple[str, int, Mapping[str, float]]]
    ) -> float:
        """Record each site's validation of the current global model; keep it if it is the best.

        Args:
            server_round: the round just aggregated.
            site_metrics: ``(site name, validation examples, metrics)`` per site.

        Returns:
            The example-weighted mean of ``config.monitor`` over the sites (NaN sites are left out
            of the mean; NaN when all are NaN).
        """
        monitor = self.config.monitor
        num = den = 0.0
        for name, n, metrics in site_metrics:
            row = {"round": server_round, "site": name, "num_examples": int(n)}
            row.update({k: float(v) for k, v in metrics.items() if _is_number(v)})
            self.history.append(row)
            value = float(metrics.get(monitor, math.nan))
            if math.isfinite(value) and n > 0:
                num += n * value
                den += n
        mean = num / den if den else math.nan
        self.history.append({"round": server_round, "site": "(weighted mean)", "num_examples": int(den), monitor: mean})
        if math.isfinite(mean) and (self.best_value is None or mean > self.best_value):
            self.best_value, self.best_round = mean, server_round
            self.best_state = copy.deepcopy(self.state)
            self.best_site_bn = copy.deepcopy(self.site_bn)
        return mean

    def site_models(self) -> dict[str, dict[str, torch.Tensor]]:
        """``local`` policy: each site's personalized best state (best global weights + the site's BN)."""
        base = self.best_state if self.best_state is not None else self.state
        bn = self.best_site_bn or self.site_bn
        return {name: apply_local_bn(base, own) for name, own in bn.items()}


def simulate_inprocess(
    make_model: Callable[[], torch.nn.Module],
    initial_state: Mapping[str, torch.Tensor],
    sites: Sequence[Site],
    *,
    config: FedConfig,
    metric_fn: Callable[..., Mapping[str, float]],
    evaluate: Callable[[torch.nn.Module, Any], Mapping[str, float]],
    checkpoint_meta: Mapping[str, Any],
    on_round: Callable[[int, float], None] | None = None,
) -> ServerState:
    """Run the whole protocol (rounds of local training and aggregation) in this process, without a federated engine.

    Every round: each site trains from the global state (:func:`client_update`), the server
    aggregates (:meth:`ServerState.aggregate`), and each site validates the new global model
    (with its own BN under ``local``); the best global model by the weighted mean validation
    metric is kept. Deterministic for a given seed; the Flower adapter runs the same functions.

    Args:
        make_model: builds a fresh network of the federation's architecture.
        initial_state: the round-0 global state.
        sites: the institutions (each needs ``train`` and ``val``).
        config: see :class:`FedConfig`.
        metric_fn: ``(y_true, y_prob) -> metrics`` for the training loop.
        evaluate: ``(model, dataset) -> metrics`` (must contain ``config.monitor``).
        checkpoint_meta: metadata describing the architecture.
        on_round: called with ``(round, weighted mean validation metric)`` after every round.

    Returns:
        The :class:`ServerState` (final and best global state, per-round history).
    """
    if not sites:
        raise ValueError("a federation needs at least one site")
    model = make_model()
    server = ServerState(initial_state, config, bn_state_keys(model))
    for server_round in range(1, config.rounds + 1):
        results = []
        for index, site in enumerate(sites):
            result = client_update(
                model, server.state, site, config=config, server_round=server_round, site_index=index,
                metric_fn=metric_fn, checkpoint_meta=checkpoint_meta, local_bn=server.site_bn.get(site.name),
            )  # fmt: skip
            results.append(result)
        server.aggregate(results, [site.name for site in sites])
        validation = []
        for site in sites:
            model.load_state_dict(apply_local_bn(server.state, server.site_bn.get(site.name)))  # own BN under FedBN
            validation.append((site.name, len(site.val), evaluate(model.eval(), site.val)))
        mean = server.record_validation(server_round, validation)
        if on_round is not None:
            on_round(server_round, mean)
    return server
