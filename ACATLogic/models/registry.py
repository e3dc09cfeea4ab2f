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


#: the entry point group through which an installed package offers architectures: in its pyproject.toml,
#: ``[project.entry-points."acat.models"] my_net = "my_package.models:MyNet"`` (a `ScanClassifier` subclass or a
#: factory, as `register_model` takes them); the entry point's name is the architecture's name in model cards
ENTRY_POINT_GROUP = "acat.models"


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _from_installed_package(name: str) -> bool:
    """Register the architecture ``name`` of an installed package (entry point group ``acat.models``); False if
    no package offers it. Loading imports that package: only what is installed in this environment is run."""
    ep = _entry_points().get(name)
    if ep is None:
        return False
    target = ep.load()
    if name not in _REGISTRY:  # the package's module may have registered it on import already
        register_model(name)(target)
    return True


def create_model(name: str, **config) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``config`` - one of ours, or one an
    installed package offers through the ``acat.models`` entry point group.

    Raises:
        ValueError: no model has that name; the message lists the known names.
    """
    if name not in _REGISTRY and not _from_installed_package(name):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())} (an installed package "
                         f"adds architectures through the {ENTRY_POINT_GROUP!r} entry point group)")
    model = _REGISTRY[name](**config)
    if not getattr(model, "registry_name", ""):
        model.registry_name = name
    return model


def accepts(name: str, parameter: str) -> bool:
    """Whether the architecture ``name`` takes the keyword argument ``parameter`` (e.g. ``class_names``)."""
    import inspect

    if name not in _REGISTRY and not _from_installed_package(name):
        return False
    try:
        parameters = inspect.signature(_REGISTRY[name]).parameters
    except (TypeError, ValueError):
        return False
    return parameter in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def list_models() -> list[str]:
    """The registered names and those installed packages offer (not loaded until used), sorted."""
    return sorted(set(_REGISTRY) | set(_entry_points()))
