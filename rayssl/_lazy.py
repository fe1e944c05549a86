"""Lazy package exports, so importing a light submodule does not pull in Ray."""

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__, __all__)`` for a package whose names live in its submodules.

    Args:
        package: the package's ``__name__``.
        exports: public name -> submodule that defines it.
    """
    names = sorted(exports)

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    def __dir__():
        return names

    return __getattr__, __dir__, names
