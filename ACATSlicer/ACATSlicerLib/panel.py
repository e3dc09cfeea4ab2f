"""The panel's widgets bound to the parameter node by their ``SlicerParameterName`` property in the .ui.

Each widget of the .ui that has a ``SlicerParameterName`` shows and edits the parameter-node field of that
name (`parameters.ParameterNode`): a change in the widget writes the field, a change of the node
(`updateWidgets`, on the node's Modified event) sets the widget. The widgets are Slicer's PythonQt objects,
used through their Qt properties, slots and signals only (the signal signatures are those Slicer's own
``slicer.util.addParameterEditWidgetConnections`` connects; SLICER_API.md), so this file imports no Qt and
runs against the stand-in widgets of the tests too. A combo box bound to a field with choices is filled
with them (the options' choices come from ACATLogic.options, never from the .ui).
"""

from __future__ import annotations

from typing import Callable

#: widget class -> (the signal of a user change, how the field's kind is read/written)
SIGNALS = {
    "QSpinBox": "valueChanged(int)",
    "QDoubleSpinBox": "valueChanged(double)",
    "ctkSliderWidget": "valueChanged(double)",
    "QComboBox": "currentIndexChanged(int)",
    "QLineEdit": "textChanged(QString)",
    "QCheckBox": "toggled(bool)",
    "qMRMLNodeComboBox": "currentNodeChanged(vtkMRMLNode*)",
}
_KINDS = {"QSpinBox": (int,), "QDoubleSpinBox": (float,), "ctkSliderWidget": (float,), "QComboBox": (str,),
          "QLineEdit": (str,), "QCheckBox": (bool,), "qMRMLNodeComboBox": ("node",)}


def parameterWidgets(ui) -> dict:
    """parameter name -> widget, for every widget of ``ui`` (`slicer.util.childWidgetVariables`) that has a
    ``SlicerParameterName``."""
    found = {}
    for widget in vars(ui).values():
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name:
            if name in found:
                raise ValueError(f"the parameter {name!r} is bound to two widgets")
            found[str(name)] = widget
    return found


def _kind(field) -> object:
    return "node" if not hasattr(field, "kind") else field.kind


class PanelBinding:
    """``widgets``: name -> widget (`parameterWidgets`); ``fields``: the parameter node class's FIELDS."""

    def __init__(self, widgets: dict, fields: dict) -> None:
        self.widgets, self.fields = dict(widgets), fields
        self.parameterNode = None
        self._slots: dict = {}
        self._updating = False
        for name, widget in self.widgets.items():
            field = fields.get(name)
            if field is None:
                raise ValueError(f"the widget {widget.objectName} is bound to {name!r}, which is no parameter")
            className = widget.className()
            if className not in SIGNALS or _kind(field) not in _KINDS[className]:
                raise ValueError(f"a {className} cannot show the parameter {name!r} ({_kind(field)})")
            if className == "QComboBox" and getattr(field, "choices", None):
                widget.clear()
                for choice in field.choices:
                    widget.addItem(choice)
            if getattr(field, "help", "") and not widget.toolTip:
                widget.toolTip = field.help

    def connect(self, parameterNode) -> None:
        """Show ``parameterNode`` (a `parameters.ParameterNode`) and write the user's changes into it."""
        self.disconnect()
        self.parameterNode = parameterNode
        for name, widget in self.widgets.items():
            slot = self._slot(name)
            widget.connect(SIGNALS[widget.className()], slot)
            self._slots[name] = slot
        self.updateWidgets()

    def disconnect(self) -> None:
        for name, slot in self._slots.items():
            widget = self.widgets[name]
            widget.disconnect(SIGNALS[widget.className()], slot)
        self._slots, self.parameterNode = {}, None

    def _slot(self, name: str) -> Callable:
        def changed(*args) -> None:
            if not self._updating and self.parameterNode is not None:
                setattr(self.parameterNode, name, self.widgetValue(name))
        return changed

    def widgetValue(self, name: str):
        widget = self.widgets[name]
        className = widget.className()
        if className in ("QSpinBox", "QDoubleSpinBox", "ctkSliderWidget"):
            return widget.value
        if className == "QComboBox":
            return widget.currentText
        if className == "QLineEdit":
            return widget.text
        if className == "QCheckBox":
            return bool(widget.checked)
        return widget.currentNode()

    def updateWidgets(self) -> None:
        """Set every bound widget from the parameter node, without echoing the changes back into it."""
        if self.parameterNode is None:
            return
        self._updating = True
        try:
            for name, widget in self.widgets.items():
                value = getattr(self.parameterNode, name)
                className = widget.className()
                wasBlocked = widget.blockSignals(True)
                try:
                    if className in ("QSpinBox", "QDoubleSpinBox", "ctkSliderWidget"):
                        widget.value = value
                    elif className == "QComboBox":
                        widget.setCurrentIndex(widget.findText(value))
                    elif className == "QLineEdit":
                        if widget.text != value:  # keep the cursor where the user types
                            widget.text = value
                    elif className == "QCheckBox":
                        widget.checked = bool(value)
                    else:
                        widget.setCurrentNode(value)
                finally:
                    widget.blockSignals(wasBlocked)
        finally:
            self._updating = False


def fillResultSelectors(overlaySelector, besideSelector, result, translate=lambda text: text) -> None:
    """The overlay choices (the saliency, each attention mask) and the choices of the view beside the original
    (each counterfactual, each difference map) of ``result`` (`results.ExplanationNodes`), without signals;
    the counterfactual shown beside the original is selected. Item data: "" or the mask name, and
    "counterfactual:<key>" / "difference:<key>"."""
    wasBlocked = overlaySelector.blockSignals(True)
    overlaySelector.clear()
    overlaySelector.addItem(translate("saliency"), "")
    for name in result.keys("attention"):
        overlaySelector.addItem(translate("attention: {name}").format(name=name), name)
    overlaySelector.blockSignals(wasBlocked)
    wasBlocked = besideSelector.blockSignals(True)
    besideSelector.clear()
    for kind, title in (("counterfactual", translate("counterfactual towards {name}")),
                        ("difference", translate("difference towards {name} (HU)"))):
        for name in result.keys(kind):
            besideSelector.addItem(title.format(name=name), f"{kind}:{name}")
    besideSelector.setCurrentIndex(besideSelector.findData(f"counterfactual:{result.shownCounterfactualKey()}"))
    besideSelector.blockSignals(wasBlocked)
