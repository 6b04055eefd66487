"""Flower adapter: run :mod:`continual.federated` on Flower (``pip install 'medimg[federated]'``).

Every Flower call of medimg is in this module (Flower's API moves between minor versions; the
extra pins one). The apps only move state dicts and metrics; the federated maths stays in
:mod:`continual.federated`, so the in-process reference and Flower give the same models:

* :func:`make_client_app` -- a ``ClientApp`` whose ``train`` handler runs
  :func:`continual.federated.client_update` on the node's site (the FedProx mu comes from the
  message's config, as Flower's ``FedProx`` strategy sends it; under the ``local`` BN policy the
  site's BN entries are kept in the node's ``context.state`` between rounds) and whose
  ``evaluate`` handler scores the received global model on the site's validation split.
* :func:`make_server_app` -- a ``ServerApp`` running :class:`MedimgFedAvg`: Flower's FedAvg
  message flow (``num-examples``-weighted) with medimg's aggregation (BN policy, integer buffers
  kept integers) and the best global model kept by the weighted validation metric.
* :func:`simulate` -- Flower's simulation engine (Ray), one CPU per client, telemetry off.

The same two apps run unchanged as a real federation (SuperLink + SuperNodes; see docs/commands/federated.md):
the task loaders get the run config (and, on a SuperNode, its node config) from the ``Context``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

__all__ = [
    "INSTALL_HINT",
    "ClientTask",
    "ServerTask",
    "make_client_app",
    "make_server_app",
    "quiet_flower",
    "simulate",
]

INSTALL_HINT = "Flower is not installed: pip install 'medimg[federated]' (flwr[simulation] 1.42)"
_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DEDUP_LOGS": "0"}


def quiet_flower() -> None:
    """Turn Flower's telemetry and update check off (set before Flower is imported)."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


def _flwr() -> Any:
    quiet_flower()
    try:
        import flwr
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(INSTALL_HINT) from exc
    return flwr


@dataclass
class ClientTask:
    """What a node needs to train and validate: its site and the federation's settings."""

    site: Any  # continual.federated.Site
    site_index: int
    config: Any  # continual.federated.FedConfig
    make_model: Callable[[], Any]
    metric_fn: Callable[..., Mapping[str, float]]
    evaluate: Callable[[Any, Any], Mapping[str, float]]
    checkpoint_meta: Mapping[str, Any]


@dataclass
class ServerTask:
    """What the server needs: the initial state, settings, site names and what to do at the end."""

    initial_state: Mapping[str, Any]
    config: Any  # continual.federated.FedConfig
    bn_keys: Mapping[str, set[str]]
    site_names: Sequence[str]
    finish: Callable[[Any], None]  # called with the continual.federated.ServerState


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def make_client_app(load_task: Callable[[Any], ClientTask]) -> ClientApp:
    """A Flower ``ClientApp``; ``load_task(context)`` gives the node's :class:`ClientTask`.

    It is called for every message (a deployed SuperNode starts a fresh ClientApp process per
    message, a simulation ships the app to a Ray worker with each message), so it should cache
    what it loads at module level where the process lives on (as ``pipelines.federated_app`` does).
    """
    _flwr()
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from continual.federated import apply_local_bn, client_update

    app = ClientApp()

    def local_bn(task: ClientTask, context: Any) -> dict[str, Any] | None:
        if task.config.bn_policy == "local" and "local-bn" in context.state.array_records:
            return context.state.array_records["local-bn"].to_torch_state_dict()
        return None

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        import dataclasses

        task = load_task(context)
        received = msg.content.array_records["arrays"].to_torch_state_dict()
        settings = msg.content.config_records.get("config", {})
        config = task.config
        if "proximal-mu" in settings:
            config = dataclasses.replace(config, proximal_mu=float(settings["proximal-mu"]))
        result = client_update(
            task.make_model(), received, task.site, config=config, server_round=int(settings.get("server-round", 1)),
            site_index=task.site_index, metric_fn=task.metric_fn, checkpoint_meta=task.checkpoint_meta,
            local_bn=local_bn(task, context),
        )  # fmt: skip
        if config.bn_policy == "local":
            from continual.federated import bn_state_keys

            keys = bn_state_keys(task.make_model())
            own = {k: result.state[k] for k in sorted(keys["affine"] | keys["stats"])}
            context.state.array_records["local-bn"] = ArrayRecord(own)
        metrics = {"num-examples": int(result.num_examples), "site-index": task.site_index, **_numbers(result.metrics)}
        content = RecordDict({"arrays": ArrayRecord(result.state), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        task = load_task(context)
        state = msg.content.array_records["arrays"].to_torch_state_dict()
        if task.config.bn_policy == "local":
            state = apply_local_bn(state, local_bn(task, context))
        model = task.make_model()
        model.load_state_dict(state)
        metrics = _numbers(task.evaluate(model.eval(), task.site.val))
        reply = {"num-examples": len(task.site.val), "site-index": task.site_index, **metrics}
        return Message(content=RecordDict({"metrics": MetricRecord(reply)}), reply_to=msg)

    return app


def _strategy_class() -> type:
    _flwr()
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from continual.federated import ClientResult, ServerState

    class MedimgFedAvg(FedAvg):  # type: ignore[misc]
        """Flower's FedAvg message flow with medimg's aggregation and best-model bookkeeping.

        Aggregation is :func:`continual.federated.aggregate_states` (example-weighted by the
        replies' ``num-examples``; BN policy; integer buffers stay integers). Every round's
        evaluate replies update :class:`continual.federated.ServerState`, which keeps the best
        global model by the example-weighted mean validation metric. ``proximal_mu > 0`` makes it
        FedProx: the mu is sent in every train config and the clients add the term.
        """

        def __init__(self, task: ServerTask, num_sites: int) -> None:
            super().__init__(
                fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=num_sites,
                min_evaluate_nodes=num_sites, min_available_nodes=num_sites,
            )  # fmt: skip
            self.task = task
            self.server = ServerState(task.initial_state, task.config, task.bn_keys)

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
            config["proximal-mu"] = float(self.task.config.proximal_mu)
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any) -> tuple[Any, Any]:
            valid, errors = self._check_and_log_replies(replies, is_train=True)
            if errors:
                reasons = "; ".join(str(m.error.reason) for m in errors)
                raise RuntimeError(f"round {server_round}: {len(errors)} client(s) failed: {reasons}")
            ordered = sorted(valid, key=lambda m: int(m.content.metric_records["metrics"]["site-index"]))
            results = [
                ClientResult(
                    state=m.content.array_records["arrays"].to_torch_state_dict(),
                    num_examples=int(m.content.metric_records["metrics"]["num-examples"]),
                )
                for m in ordered
            ]
            names = [self._site_name(int(m.content.metric_records["metrics"]["site-index"])) for m in ordered]
            state = self.server.aggregate(results, names)
            metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
            return ArrayRecord(state), metrics

        def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            metrics = super().aggregate_evaluate(server_round, replies)
            rows = []
            for m in replies:
                if m.has_error():
                    continue
                record = dict(m.content.metric_records["metrics"])
                index = int(record.pop("site-index"))
                n = int(record.pop("num-examples"))
                rows.append((index, n, record))
            rows.sort(key=lambda r: r[0])
            self.server.record_validation(server_round, [(self._site_name(i), n, rec) for i, n, rec in rows])
            return metrics

        def _site_name(self, index: int) -> str:
            names = list(self.task.site_names)
            return names[index] if 0 <= index < len(names) else f"site{index}"

    return MedimgFedAvg


def make_server_app(load_task: Callable[[Any], ServerTask]) -> ServerApp:
    """A Flower ``ServerApp`` running :class:`MedimgFedAvg` for ``config.rounds`` rounds on every node.

    ``load_task(context)`` gives the :class:`ServerTask`; its ``finish`` gets the final
    :class:`continual.federated.ServerState` (best and last global state, per-round history).
    The run waits for as many nodes as the task has sites.
    """
    _flwr()
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp

    app = ServerApp()
    strategy_class = _strategy_class()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        task = load_task(context)
        strategy = strategy_class(task, len(task.site_names))
        strategy.start(grid=grid, initial_arrays=ArrayRecord(dict(task.initial_state)), num_rounds=task.config.rounds)
        task.finish(strategy.server)

    return app


def simulate(server_app: Any, client_app: Any, *, num_sites: int, quiet: bool = True) -> None:
    """Run the apps on Flower's simulation engine: one virtual SuperNode per site, one CPU each.

    Raises:
        ImportError: Flower (with its ``simulation`` extra, Ray) is not installed.
    """
    _flwr()
    import logging
    import warnings

    from flwr.simulation import run_simulation

    if quiet:  # Flower's own handler prints warnings (e.g. run_simulation's deprecation) to the terminal
        logging.getLogger("flwr").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_sites,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                # "local": a Ray of its own, never a cluster already running on this machine (ray.init's
                # default joins one, whose CPUs other jobs hold: a simulation would wait for them)
                "init_args": {
                    "address": "local",
                    "logging_level": "ERROR" if quiet else "INFO",
                    "log_to_driver": not quiet,
                },
            },
        )
