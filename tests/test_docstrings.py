"""Every public name of the library has a docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import hf_rpg


def _public_objects():
    for info in pkgutil.walk_packages(hf_rpg.__path__, prefix="hf_rpg."):
        short = info.name.removeprefix("hf_rpg.")
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{short}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(function):
                        yield f"{short}.{name}.{attr}", function


def test_public_names_have_docstrings():
    names = dict(_public_objects())
    assert len(names) > 100
    missing = sorted(name for name, obj in names.items() if not (obj.__doc__ or "").strip())
    assert not missing, missing
