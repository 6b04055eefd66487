"""Lazy package exports: imported on first use, cached, unknown names refused."""

from __future__ import annotations

import sys
import types

import pytest

from medimg.lazy import lazy_exports


def test_a_name_is_imported_on_first_use_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    package = types.ModuleType("fake_package")
    monkeypatch.setitem(sys.modules, "fake_package", package)
    getattr_, dir_ = lazy_exports("fake_package", {"sqrt": "math"}, ["sqrt"])
    assert "sqrt" in dir_() and "sqrt" not in vars(package)
    import math

    assert getattr_("sqrt") is math.sqrt
    assert vars(package)["sqrt"] is math.sqrt  # later lookups do not come back
    with pytest.raises(AttributeError, match="fake_package.*cos"):
        getattr_("cos")  # in math, but not exported
