"""A real Flower federation on loopback: one SuperLink, N SuperNodes, ``flwr run`` (Flower 1.42).

Used by the deployment test; the same commands are in the README. Every component binds to
127.0.0.1 on free ports and has its own ``FLWR_HOME`` under the work folder (nothing in ``$HOME``);
telemetry, the update check and the runtime dependency installation are off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        # SuperLink and SuperNodes start their helpers by name: the venv's bin must be on PATH
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    return env


def _wait_port(port: int, timeout: float, procs: Sequence[subprocess.Popen]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for p in procs:  # the components start their helpers in new sessions (process groups)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_loopback(
    app_dir: Path,
    work: Path,
    node_configs: Sequence[str],
    run_config: Mapping[str, object],
    *,
    timeout: float = 600,
) -> dict[str, object]:
    """Start a SuperLink and one SuperNode per node config, run the app, wait for it, stop everything.

    Returns:
        ``{"run_id", "status", "seconds", "logs"}``; ``status`` is Flower's (``finished:completed``
        on success).
    """
    bindir = Path(sys.executable).parent
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    link = free_port()
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(bindir / "flower-superlink"),
                    "--insecure",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(link),
                    "--disable-runtime-dependency-installation",
                ],
                env=_env(work / "home-link"),
                stdout=(logs / "superlink.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )
        _wait_port(link, 60, procs)
        for i, node_config in enumerate(node_configs):
            procs.append(
                subprocess.Popen(
                    [
                        str(bindir / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{link}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        node_config,
                    ],
                    env=_env(work / f"home-node{i}"),
                    stdout=(logs / f"supernode{i}.log").open("w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
        cli = _env(work / "home-cli")
        (work / "home-cli" / "config.toml").write_text(
            '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        overrides = " ".join(
            f"{k}={json.dumps(v)}" if not isinstance(v, str) else f"{k}='{v}'" for k, v in run_config.items()
        )
        flwr = str(bindir / "flwr")
        submitted = subprocess.run(
            [flwr, "run", str(app_dir), "loopback", "--format", "json", "--run-config", overrides],
            env=cli, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        try:
            reply = json.loads(submitted.stdout)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"flwr run failed: {submitted.stdout}\n{submitted.stderr}") from exc
        if not reply.get("success"):
            raise RuntimeError(f"flwr run failed: {reply}")
        run_id = str(reply["run-id"])
        remaining = max(10.0, timeout - (time.monotonic() - start))
        with (logs / "run.log").open("w") as fh:  # the stream ends when the run has finished
            subprocess.run([flwr, "log", run_id, "loopback", "--stream"], env=cli, stdout=fh, stderr=subprocess.STDOUT,
                           timeout=remaining, check=False)  # fmt: skip
        listed = subprocess.run(
            [flwr, "ls", "loopback", "--run-id", run_id, "--format", "json"], env=cli, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        status = json.loads(listed.stdout)["runs"][0]["status"]
        return {"run_id": run_id, "status": status, "seconds": time.monotonic() - start, "logs": str(logs)}
    finally:
        _stop(procs)
