"""The medimg Flower apps: ``pipelines.federated_app:server_app`` and ``pipelines.federated_app:client_app``.

Deployment (SuperLink + SuperNodes, see docs/commands/federated.md): the settings come from the run config
(``pipeline``, ``num_sites``, ``rounds``, ``local_epochs``, ...; defaults in
``deploy/flower/pyproject.toml``), each SuperNode names its own data with ``--node-config
"data-dir='/data/site' partition-id=0"``; the server writes ``federated.pt`` and ``rounds.csv``
to the run config's ``out``.

Simulation (``medimg federated simulate``): :func:`server_app_for` / :func:`client_app_for` build
the same apps around the settings, and each virtual SuperNode's ``partition-id`` picks its site.
Importing this module needs Flower (the ``federated`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continual.flower import ClientTask, ServerTask, make_client_app, make_server_app

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

__all__ = ["client_app", "client_app_for", "client_task", "server_app", "server_app_for", "server_task"]

# One loaded site per process (Ray actors and SuperNodes reuse it across rounds).
_TASKS: dict[str, ClientTask] = {}


def _settings_key(settings: Mapping[str, Any], index: int, site_dir: str | None) -> str:
    return json.dumps([dict(settings), index, site_dir], sort_keys=True, default=str)


def client_task(settings: Mapping[str, Any], index: int, site_dir: str | None = None) -> ClientTask:
    """The :class:`ClientTask` of site ``index`` (or of the folder ``site_dir`` on a deployed node)."""
    from pipelines.federation import load_federation

    key = _settings_key(settings, index, site_dir)
    if key not in _TASKS:
        _TASKS.clear()
        fed = load_federation(settings, only_site=None if site_dir else index, site_dir=site_dir)
        site = fed.sites[0] if site_dir else fed.sites[index]
        _TASKS[key] = ClientTask(
            site=site, site_index=index, config=fed.config, make_model=fed.make_model,
            metric_fn=fed.pipeline.metrics, evaluate=fed.evaluate, checkpoint_meta=fed.meta,
        )  # fmt: skip
    return _TASKS[key]


def server_task(settings: Mapping[str, Any]) -> ServerTask:
    """The :class:`ServerTask`; at the end it writes ``OUT/federated.pt`` and ``OUT/rounds.csv``."""
    from continual.federated import bn_state_keys
    from pipelines.federation import load_federation, save_server, write_rounds

    fed = load_federation(settings, only_site=-1)
    out = Path(str(fed.settings.get("out") or "."))

    def finish(server: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_rounds(out, server.history)
        save_server(fed, server, out / "federated.pt", "federated")

    return ServerTask(
        initial_state=fed.initial_state, config=fed.config, bn_keys=bn_state_keys(fed.make_model()),
        site_names=[s.name for s in fed.sites], finish=finish,
    )  # fmt: skip


def _node_site(context: Any) -> tuple[int, str | None]:
    node = dict(context.node_config)
    index = int(node.get("partition-id", 0))
    site_dir = node.get("data-dir")
    return index, str(site_dir) if site_dir else None


def client_app_for(settings: Mapping[str, Any]) -> ClientApp:
    """A ClientApp bound to ``settings`` (simulation: the run config is not passed by the engine)."""
    frozen = dict(settings)
    return make_client_app(lambda context: client_task(frozen, *_node_site(context)))


def server_app_for(settings: Mapping[str, Any]) -> ServerApp:
    """A ServerApp bound to ``settings``."""
    frozen = dict(settings)
    return make_server_app(lambda context: server_task(frozen))


#: Deployment apps: settings from the run config, the site from the node config.
client_app = make_client_app(lambda context: client_task(dict(context.run_config), *_node_site(context)))
server_app = make_server_app(lambda context: server_task(dict(context.run_config)))
