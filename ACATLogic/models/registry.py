"""A name -> constructor table for every model, so weights files and checkpoints can name their model.

Every registered model records the keyword arguments it was built with in ``model.config`` (a
JSON-serialisable dict) and its table name in ``model.registry_name``; therefore
``create_model(model.registry_name, **model.config)`` rebuilds the same architecture, which is what a
``.safetensors`` file plus its JSON card needs (timm-style factories, see shared/STYLE.md).

Example:
    >>> model = create_model("brain_mtl", widths=(4, 4, 8, 8, 8, 8, 8))
    >>> twin = create_model(model.registry_name, **model.config)
"""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

T = TypeVar("T", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[T], T]:
    """Decorator that enters a model class or factory function in the table under ``name``.

    A registered class gets ``registry_name = name`` as a class attribute. A factory function must set
    ``registry_name`` and ``config`` on the model it returns itself, because only it knows which of its
    arguments are fixed by the name (e.g. "lung_resnet50" fixes the depths).

    Raises:
        ValueError: ``name`` is already taken (two models under one name would make weights ambiguous).
    """
    def decorator(target: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        if isinstance(target, type):
            target.registry_name = name
        _REGISTRY[name] = target
        return target
    return decorator


def create_model(name: str, **config) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``config``.

    Raises:
        ValueError: no model has that name; the message lists the known names.
    """
    try:
        constructor = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    return constructor(**config)


def list_models() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)
