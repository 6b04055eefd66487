"""``medimg listen``: a DICOM storage SCP that runs a pipeline on each study it receives."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from medimg.untrusted import plain_text, terminal_text
from pipelines.commands.app import (
    WEIGHTS_HELP,
    ModelCardOption,
    PipelineArgument,
    TrustModelCodeOption,
    app,
    console,
    err_console,
    error_exit,
    load_pipeline,
)


@app.command()
def listen(
    pipeline: PipelineArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: incoming/, runs/<study>/, listen.json.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="DICOM port to listen on.")] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This listener's AE title.")] = "MEDIMG",
    bind: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "0.0.0.0",
    allow: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--allow",
            help="AE@HOST allowed to send (repeatable; AE@* for any host). Everyone else is refused; "
            "without --allow every C-STORE is refused.",
        ),
    ] = None,
    study_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds without new instances after which a study is run.")
    ] = 30.0,
    forward: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="AE@HOST:PORT to C-STORE each run's DICOM results to."),
    ] = None,
    calling_ae: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--calling-ae", help="AE title when forwarding (default: --ae-title)."),
    ] = None,
    weights: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help=f"{WEIGHTS_HELP} Default: the demo weights (synthetic phantoms only)."),
    ] = None,
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
) -> None:
    """Receive studies (C-STORE SCP, also C-ECHO) into OUT/incoming, run the pipeline on each study
    once it is quiet (OUT/runs/<study>/), forward the DICOM results; until Ctrl-C or SIGTERM."""
    from medimg.pacs.aet import check_ae_title, parse_allowed, parse_remote
    from medimg.pacs.listener import StoreListener
    from pipelines.listen import INCOMING_FOLDER, StudyRunner
    from pipelines.runner import default_weights

    try:
        title = check_ae_title(ae_title)
        peers = [parse_allowed(text) for text in allow or []]
        target = parse_remote(forward) if forward else None
        caller = check_ae_title(calling_ae) if calling_ae else title
    except ValueError as exc:
        raise error_exit(exc) from exc
    task = load_pipeline(pipeline)
    weights = weights or default_weights(task.name)
    if weights is None:
        raise error_exit(f"no --weights given and no demo weights for '{task.name}' found")
    runner = StudyRunner(
        task,
        out,
        weights=weights,
        forward=target,
        calling_ae=caller,
        run_options={"batch_size": batch_size, "device": device, "trust_code": trust_model_code, "card": model_card},
    )
    log_to_stderr()
    try:
        listener = StoreListener(
            out / INCOMING_FOLDER,
            ae_title=title,
            port=port,
            host=bind,
            allow=peers,
            study_timeout=study_timeout,
            on_study=runner,
        ).start()
    except (OSError, ValueError) as exc:
        raise error_exit(f"cannot listen on {bind}:{port}: {exc}") from exc
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: listener.request_stop())
    if not peers:
        err_console.print("[yellow]warning:[/yellow] no --allow given: every C-STORE is refused")
    console.print(
        f"Listening as {terminal_text(title)} on {terminal_text(bind)}:{listener.port}; "
        f"studies run {study_timeout:g} s after their last instance; Ctrl-C stops."
    )
    try:
        listener.wait()
    finally:
        listener.stop()
    c = listener.counts
    console.print(
        f"Stopped: {c['stored']} instance(s) stored, {c['refused']} refused, {c['failed']} failed; "
        f"{c['studies']} stud(ies) run; {len(listener.pending())} not run (see OUT/listen.json)."
    )


class _PlainFormatter(logging.Formatter):
    """Log lines whose message holds values from the network (UIDs, AE titles) as plain one-line
    text: a newline or an escape sequence in a header cannot forge a log line or drive the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        record.message = plain_text(record.message)
        return super().formatMessage(record)


def log_to_stderr() -> None:
    """The listener's and runs' log lines (refusals, studies run, forwarding) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(_PlainFormatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("medimg.pacs", "medimg.listen"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
