"""A network from a MONAI bundle's ``network_def``, instantiating MONAI network classes only.

A bundle config can run arbitrary Python: ``$`` expressions are evaluated, ``_target_`` names any
importable callable, ``%`` macros pull in other files and ``_mode_``/``_requires_`` change how
things are called. A model file from elsewhere is untrusted data, so by default
:func:`check_network_config` accepts only plain values and ``_target_`` classes that live in
``monai.networks`` (bare names as MONAI's component locator resolves them, such as
``"SegResNet"``, or dotted ``monai.networks...`` paths), and refuses anything else with the key
that holds it. ``trust=True`` (the command line's ``--trust-model-code``) skips the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ALLOWED_MODULES",
    "UntrustedConfigError",
    "build_monai_network",
    "check_network_config",
    "resolved_config",
]

#: The modules a ``_target_`` may resolve into when the config is not trusted.
ALLOWED_MODULES = ("monai.networks.",)
#: Keys of a config item MONAI acts on: only ``_target_`` and ``_disabled_`` are safe to accept.
_SPECIAL = ("_mode_", "_requires_", "_desc_")


class UntrustedConfigError(ValueError):
    """A bundle config asks for code to be run (a ``$`` expression, a non-MONAI ``_target_``...)."""


def _target_module(target: str) -> str:
    """The module a ``_target_`` name resolves into ('' when MONAI does not know it)."""
    if "." in target:
        return target
    from monai.bundle.config_item import ComponentLocator

    found = ComponentLocator().get_component_module_name(target)
    if isinstance(found, list):  # a name in several MONAI modules: all must be allowed
        return next((m for m in found if not m.startswith(ALLOWED_MODULES)), found[0] if found else "")
    return f"{found}.{target}" if found else ""


def _is_module_class(path: str) -> bool:
    """Whether the dotted ``path`` names a ``torch.nn.Module`` subclass (a function such as
    ``monai.networks.utils.save_state``, which writes files, is not)."""
    import importlib

    import torch

    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, torch.nn.Module)


def _reference(root: Mapping[str, Any] | None, text: str) -> tuple[str, Any]:
    """The path and value of a ``@key`` (``@a::b``, ``@a#b``) reference inside ``root``."""
    path = text[1:].replace("#", "::")
    value: Any = root
    for part in path.split("::"):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return path, value


def _refuse(where: str, what: str) -> UntrustedConfigError:
    return UntrustedConfigError(
        f"{where}: {what}; medimg instantiates only MONAI network classes from a model's config "
        "unless you pass --trust-model-code (only for files whose origin you trust)"
    )


def check_network_config(
    value: Any, where: str = "network_def", *, root: Mapping[str, Any] | None = None, _depth: int = 0
) -> None:
    """Raise :class:`UntrustedConfigError` naming the key of the first value that would run code.

    Accepted: numbers, booleans, None, strings not starting with ``$`` or ``%``, lists and
    mappings of these, mappings whose ``_target_`` is a ``torch.nn.Module`` class in
    ``monai.networks``, and ``@key`` references into ``root`` (the whole config) whose values
    are accepted too.
    """
    if _depth > 50:
        raise _refuse(where, "references nested more than 50 deep")
    if isinstance(value, str):
        if value.startswith("$"):
            raise _refuse(where, f"a Python expression {value[:80]!r}")
        if value.startswith("%"):
            raise _refuse(where, f"a macro {value[:80]!r} that reads another file")
        if value.startswith("@"):
            try:
                path, target = _reference(root, value)
            except KeyError:
                raise _refuse(where, f"a reference {value[:80]!r} to nothing in the config") from None
            check_network_config(target, path, root=root, _depth=_depth + 1)
        return
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_network_config(item, f"{where}[{index}]", root=root, _depth=_depth + 1)
        return
    if not isinstance(value, Mapping):
        raise _refuse(where, f"a value of type {type(value).__name__}")
    for key, item in value.items():
        name = f"{where}.{key}"
        if not isinstance(key, str):
            raise _refuse(where, f"a non-text key {key!r}")
        if key in _SPECIAL:
            raise _refuse(name, "a special key that changes how MONAI calls the target")
        if key == "_target_":
            if not isinstance(item, str) or item.startswith(("$", "%", "@")):
                raise _refuse(name, f"a computed target {item!r}")
            module = _target_module(item)
            if not module.startswith(ALLOWED_MODULES) or not _is_module_class(module):
                found = f"{module}" if module else "not a MONAI name"
                raise _refuse(name, f"the target {item!r} ({found}) is not a MONAI network class")
            continue
        check_network_config(item, name, root=root, _depth=_depth + 1)


def build_monai_network(
    config: Mapping[str, Any], *, trust: bool = False, where: str = "network_def", key: str = "network_def"
) -> Any:
    """Instantiate ``config[key]`` (a bundle's ``network_def``; ``config`` is the whole inference
    config, which ``@`` references point into) with MONAI's bundle parser.

    Raises:
        UntrustedConfigError: without ``trust``, a value that would run code (the key is named).
        ValueError: the config does not build a ``torch.nn.Module`` (the message says why).
    """
    import torch
    from monai.bundle import ConfigParser

    item = config.get(key) if isinstance(config, Mapping) else None
    if not trust:
        check_network_config(item, where, root=config)
    if not isinstance(item, Mapping) or "_target_" not in item:
        raise ValueError(f"{where}: not a component (a mapping with a _target_)")
    try:
        network = ConfigParser(dict(config)).get_parsed_content(key, instantiate=True)
    except Exception as exc:  # MONAI wraps the constructor's error in a RuntimeError with the config
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [""])[0]
        raise ValueError(f"{where}: cannot build the network ({type(cause).__name__}: {first[:300]})") from exc
    if not isinstance(network, torch.nn.Module):
        raise ValueError(f"{where}: builds a {type(network).__name__}, not a torch.nn.Module")
    return network


def _substitute(value: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    if depth > 50:
        raise ValueError("references nested more than 50 deep")
    if isinstance(value, str) and value.startswith("@"):
        return _substitute(_reference(root, value)[1], root, depth + 1)
    if isinstance(value, Mapping):
        return {k: _substitute(v, root, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(v, root, depth + 1) for v in value]
    return value


def resolved_config(config: Mapping[str, Any], key: str = "network_def") -> dict[str, Any]:
    """``config[key]`` with its ``@`` references replaced by their values: a self-contained
    network config that a medimg checkpoint can store and :func:`build_monai_network` rebuild."""
    return dict(_substitute(config[key], config))
