"""The output folder of ``medimg run`` between runs: one run at a time, honest reruns, readable errors.

- :class:`OutputLock`: ``OUT/.medimg.lock`` (an ``flock``, released by the kernel when the process
  dies, so a lock left by a killed run is never in the way) keeps a second run out of the folder;
- :func:`result_settings` / :func:`check_rerun`: a rerun into a folder that holds results of other
  weights or settings is refused, instead of mixing two models' rows;
- :func:`clean_previous_run`: what ``--overwrite`` removes (only inside OUT);
- :func:`describe_error`: one readable line for an exception (MONAI's "applying transform" wrapper
  unwrapped to its cause, no object reprs, no control characters).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "LOCK_NAME",
    "OutputLock",
    "RunRefused",
    "check_rerun",
    "clean_previous_run",
    "describe_error",
    "prepare_output",
    "result_settings",
]

LOCK_NAME = ".medimg.lock"
#: The files every run writes in OUT (besides the pipeline's own, listed in ``run.json``).
RUN_FILES = ("run.json", "results.csv", "errors.csv", "report.html")

_WRAPPED = re.compile(r"^applying transform\b")
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
#: Exceptions whose message alone does not say what happened (``KeyError: 'PixelData'``).
_TERSE = (KeyError, IndexError, AttributeError, TypeError, ZeroDivisionError, AssertionError)


class RunRefused(ValueError):
    """The run cannot start in this output folder (locked, a file, other settings); nothing was written."""


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """One readable line for ``exc``: a wrapper without a message of its own (MONAI's "applying
    transform <...>") is replaced by its cause (``__cause__``, else ``__context__``); object reprs
    and control characters are removed; at most ``limit`` characters."""
    error, seen = exc, set()
    while id(error) not in seen:
        seen.add(id(error))
        cause = error.__cause__ or error.__context__
        text = str(error)
        if cause is None or (text and not _WRAPPED.match(text) and "object at 0x" not in text):
            break
        error = cause
    text = str(error)
    if not text or isinstance(error, _TERSE):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    text = _OBJECT_REPR.sub(r"<\1>", text)
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def prepare_output(out: str | os.PathLike[str]) -> Path:
    """``out`` as a folder (created); :class:`RunRefused` when it is a file or cannot be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunRefused(f"the output folder {out} is a file, not a folder: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunRefused(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    return out


class OutputLock:
    """``with OutputLock(out):`` holds ``out/.medimg.lock`` (non-blocking ``flock``; the file holds the
    PID); :class:`RunRefused` when another run holds it. Released and removed on exit, also on errors."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def _refuse(self, fd: int) -> RunRefused:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        return RunRefused(f"another run{pid} is writing to {self.path.parent} (lock {self.path}); wait for it to end")

    def __enter__(self) -> OutputLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise RunRefused(f"cannot create the lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise self._refuse(fd) from None
        try:  # the holder may have removed the file between our open and flock: ours is then stale
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if not same:
            raise self._refuse(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the flock
        self._fd = None


def result_settings(pipeline: Any, weights_sha256: str) -> dict[str, Any]:
    """What decides a run's results (batch size, device and workers do not): pipeline, weights and,
    for pipelines with uncertainty, its method, samples and ensemble models (their SHA-256,
    :func:`medimg.model_sources.model_sha256`: bundle folders and model cards included);
    for pipelines with a label convention (brats), that setting; for density, its views table and rules."""
    from medimg.model_sources import model_sha256

    method = getattr(pipeline, "uncertainty", None)
    convention = getattr(pipeline, "label_convention", None)
    ensemble = list(getattr(pipeline, "ensemble_weights", []) or []) if method == "ensemble" else []
    try:
        ensemble_sha = [model_sha256(w) for w in ensemble]
    except OSError as exc:
        raise RunRefused(f"cannot read the ensemble weights: {exc}") from exc
    return {
        "pipeline": pipeline.name,
        "weights_sha256": weights_sha256,
        "uncertainty": method,
        "samples": getattr(pipeline, "samples", None) if method in ("tta", "mc-dropout") else None,
        "ensemble_weights_sha256": ensemble_sha,
        # brats: the output labels' convention (auto, brats2020, brats2023)
        **({"label_convention": convention} if convention is not None else {}),
        # density: the views table and naming rules (--views, --view-rule)
        **(pipeline.view_settings() if hasattr(pipeline, "view_settings") else {}),
    }


def _stored_settings(run: Mapping[str, Any]) -> dict[str, Any]:
    """The result settings of a ``run.json`` (one written before they were stored: pipeline and weights)."""
    stored = run.get("result_settings")
    if isinstance(stored, Mapping):
        return dict(stored)
    weights = run.get("weights")
    return {
        "pipeline": run.get("pipeline"),
        "weights_sha256": weights.get("sha256") if isinstance(weights, Mapping) else None,
        "uncertainty": None,
        "samples": None,
        "ensemble_weights_sha256": [],
    }


def check_rerun(out: Path, settings: Mapping[str, Any]) -> None:
    """:class:`RunRefused` naming each difference when ``out/run.json`` was written with other
    :func:`result_settings`; nothing when there is no earlier run or the settings agree (resume)."""
    path = Path(out) / "run.json"
    if not path.exists():
        return
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(run, Mapping):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise RunRefused(
            f"{path} of an earlier run cannot be read ({describe_error(exc)}): pass --overwrite to start clean"
        ) from exc
    before = _stored_settings(run)
    # Both ways: a setting given before and dropped now differs too.
    differences = [
        f"{key}: {before.get(key)!r} before, {settings.get(key)!r} now"
        for key in [*settings, *(k for k in before if k not in settings)]
        if before.get(key) != settings.get(key)
    ]
    if differences:
        raise RunRefused(
            f"{out} holds the results of a run with other settings ({'; '.join(differences)}); "
            "choose another output folder, or pass --overwrite to remove them and start clean"
        )


def _inside(root: Path, relative: object) -> Path | None:
    """``root/relative`` when it names something strictly inside ``root`` (no ``..``, no absolute
    path, no symlinked folder on the way), else None."""
    if not isinstance(relative, str) or not relative:
        return None
    target = Path(os.path.normpath(root / relative))
    try:
        parent = target.parent.resolve(strict=True)
    except OSError:
        return None
    if target == root or not (parent == root or root in parent.parents):
        return None
    return parent / target.name


def clean_previous_run(out: Path) -> list[Path]:
    """Remove what earlier runs wrote in ``out`` (``--overwrite``): the run files, the pipeline's
    run-level files and study folders named in ``run.json``, and the folders one or two levels down
    holding a ``study.json`` (not inside another run's OUT). Nothing outside ``out`` is touched
    (symlinks are removed, never followed)."""
    root = Path(out).resolve()
    names: set[object] = set(RUN_FILES)
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        run = json.loads((root / "run.json").read_text(encoding="utf-8"))
        names.update(run.get("outputs", []))
        names.update(run.get("folders", {}).values())
    for marker in [*root.glob("*/study.json"), *root.glob("*/*/study.json")]:  # studies/<uid>/, <case>/
        folder = marker.parent
        if not any((p / "run.json").exists() for p in (folder, folder.parent) if p != root):  # another OUT
            names.add(os.path.relpath(folder, root))
    removed = []
    for name in names:
        target = _inside(root, name)
        if target is None or not (target.is_symlink() or target.exists()):
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        removed.append(target)
    return removed
