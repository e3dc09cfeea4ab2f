"""The panel's state: a typed view of the module's ``vtkMRMLScriptedModuleNode``, saved with the scene.

A parameter node class lists its fields as class attributes (`Parameter`, `NodeParameter`); reading a
field converts the node's text to the field's type, writing checks the value and stores it. The node
holds text parameters (``SetParameter``/``GetParameter``) and node references
(``SetNodeReferenceID``/``GetNodeReference``), the storage Slicer's own scripted modules use. A node field
is always allowed to be empty (None): an unselected lesion mask is a normal state.

Why not Slicer's ``parameterNodeWrapper``: it is not part of the MRML that runs without the Slicer GUI,
so the module's state could never be tested here as Slicer runs it (its unions of node types without None
failed only inside Slicer); this class runs for real on any MRML scene (Testing/test_slicer_widget.py).

`explainOptionParameters` makes one field per `ACATLogic.options.ExplainOptions` field, under its
camelCase name (``step_size`` -> ``stepSize``), with the field's type and choices: the options are
defined once, in ACATLogic, and a new option needs no change here. Values that leave an option to the
model card: `request.MODEL_DEFAULT` for a choice, 0 for a number, "" for text, None for a yes/no option.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

from .request import MODEL_DEFAULT, panelName

_TRUE, _FALSE = "true", "false"


class Parameter:
    """A text, number or yes/no field. ``kind``: str, int, float or bool; ``choices``: the allowed values of
    a str field (None: any); ``optional``: None is a value (stored as "")."""

    def __init__(self, kind: type, default: Any, choices: Optional[Sequence[str]] = None,
                 within: Optional[Tuple[float, float]] = None, optional: bool = False, help: str = "") -> None:
        self.kind, self.default, self.within, self.optional, self.help = kind, default, within, optional, help
        self.choices = tuple(choices) if choices is not None else None
        self.name = ""
        self.check(default)

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def check(self, value: Any) -> Any:
        """``value`` as the field's type; ValueError if it is not one."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.name or 'this parameter'} cannot be empty")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, not {value!r}")
        elif self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{self.name} must be a number, not {value!r}")
            value = self.kind(value)
            if self.within is not None and not self.within[0] <= value <= self.within[1]:
                raise ValueError(f"{self.name} must be in [{self.within[0]}, {self.within[1]}], not {value}")
        elif not isinstance(value, str):
            raise ValueError(f"{self.name} must be text, not {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, not {value!r}")
        return value

    def toText(self, value: Any) -> str:
        value = self.check(value)
        if value is None:
            return ""
        if self.kind is bool:
            return _TRUE if value else _FALSE
        return repr(value) if self.kind is float else str(value)

    def fromText(self, text: str) -> Any:
        """The stored text as the field's value; the default for text that is not one (an older scene)."""
        if text == "" and self.kind is not str:
            return None if self.optional else self.default
        try:
            if self.kind is bool:
                return {_TRUE: True, _FALSE: False}[text]
            return self.check(self.kind(float(text)) if self.kind is int else self.kind(text))
        except (KeyError, ValueError):
            return self.default

    def read(self, node) -> Any:
        if not self.isSet(node):
            return self.default
        return self.fromText(node.GetParameter(self.name))

    def write(self, node, value: Any) -> None:
        node.SetParameter(self.name, self.toText(value))

    def isSet(self, node) -> bool:
        return self.name in _parameterNames(node)


class NodeParameter:
    """A node reference to one of ``classes`` (MRML class names), or None."""

    def __init__(self, *classes: str, help: str = "") -> None:
        self.classes, self.help, self.name = classes, help, ""
        self.default = None

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def check(self, value: Any) -> Any:
        if value is not None and not any(value.IsA(c) for c in self.classes):
            raise ValueError(f"{self.name} must be a {' or '.join(self.classes)}, not {value.GetClassName()}")
        return value

    def read(self, node) -> Any:
        return node.GetNodeReference(self.name)

    def write(self, node, value: Any) -> None:
        node.SetNodeReferenceID(self.name, self.check(value).GetID() if value is not None else None)

    def isSet(self, node) -> bool:
        return True  # an unset reference is the empty selection, a valid state


def _parameterNames(node) -> set:
    return set(node.GetParameterNames())


def explainOptionParameters() -> dict:
    """One `Parameter` per `ExplainOptions` field, keyed by its panel (camelCase) name."""
    from .paths import ensureACATLogicImportable

    ensureACATLogicImportable()
    from ACATLogic.options import ExplainOptions  # standard library only: fine before torch is installed

    fields = {}
    for f in dataclasses.fields(ExplainOptions):
        kind, choices, help_text = f.metadata["kind"], f.metadata["choices"], f.metadata["help"]
        if choices is not None:
            default = f.default if f.default is not None else MODEL_DEFAULT
            fields[panelName(f.name)] = Parameter(str, default, [MODEL_DEFAULT, *choices] if f.default is None
                                                  else choices, help=help_text)
        elif kind is bool:
            fields[panelName(f.name)] = Parameter(bool, f.default, optional=True, help=help_text)
        elif kind in (int, float):
            fields[panelName(f.name)] = Parameter(kind, kind(f.default or 0), help=help_text)
        else:  # text, and comma-separated lists
            fields[panelName(f.name)] = Parameter(str, f.default or "", help=help_text)
    return fields


class ParameterNode:
    """A typed view of ``node`` (a vtkMRMLScriptedModuleNode). Subclasses declare their fields as class
    attributes; ``EXTRA_FIELDS`` (a callable returning name -> field) adds generated ones."""

    FIELDS: dict = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        fields = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "FIELDS", {}))
        fields.update({name: value for name, value in vars(cls).items()
                       if isinstance(value, (Parameter, NodeParameter))})
        for name, field in getattr(cls, "extraFields", lambda: {})().items():
            if name in fields:
                raise TypeError(f"{cls.__name__}.{name} is defined twice")
            field.__set_name__(cls, name)
            fields[name] = field
        cls.FIELDS = fields

    def __init__(self, node) -> None:
        if node is None or not node.IsA("vtkMRMLScriptedModuleNode"):
            raise ValueError("a parameter node is a vtkMRMLScriptedModuleNode")
        object.__setattr__(self, "node", node)

    def __setattr__(self, name: str, value: Any) -> None:
        field = type(self).FIELDS.get(name)
        if field is None:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        field.write(self.node, value)

    def __getattribute__(self, name: str) -> Any:
        # the fields are class attributes: reading one reads the node, so two views of one node agree
        if name in type(self).FIELDS:
            return type(self).FIELDS[name].read(object.__getattribute__(self, "node"))
        return object.__getattribute__(self, name)

    def setDefaults(self) -> None:
        """Write every field's default that the node does not hold yet (one Modified event)."""
        wasModifying = self.node.StartModify()
        try:
            for field in type(self).FIELDS.values():
                if not field.isSet(self.node):
                    field.write(self.node, field.default)
        finally:
            self.node.EndModify(wasModifying)

    def values(self) -> dict:
        return {name: getattr(self, name) for name in type(self).FIELDS}
