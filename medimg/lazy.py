"""Lazy exports for package doors (PEP 562): a public name is imported from its module on first use.

Every package of medimg lists its entry points in ``__all__`` but imports them only when they are
first used, so ``import medimg`` (and the ``medimg`` command's start-up) loads neither numpy nor
torch. Each package calls :func:`lazy_exports` once::

    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazy exports.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it (imported when the name is first used).
        public: the package's ``__all__`` (listed by ``dir()`` before anything is imported).

    Returns:
        ``(__getattr__, __dir__)``; the first caches each imported name on the package, so later
        lookups do not come back to it, and raises AttributeError for any other name.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups find it without coming here
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
