"""What the page shows of one result: prediction, probabilities and the overlay / view choices.

Plain data (lists of dicts with strings and numbers) for the page's state, built from ACATSlicerLib's
`ExplanationNodes` and its report.json: the model, method and numbers only, never patient data.
"""

from __future__ import annotations

from . import plot_svg

SALIENCY = "saliency"


def view_choices(result) -> dict:
    """``overlays``: what can lie over the CT (the saliency, each ACAT attention mask); ``rights``: what the
    counterfactual view can show (each counterfactual, each difference map); ``right_default``: the
    counterfactual the Slicer module puts beside the original ("" when the method makes none).
    Each choice is {"title": shown text, "value": key}."""
    overlays = [{"title": "saliency", "value": SALIENCY}]
    overlays += [{"title": f"attention: {k}", "value": f"attention:{k}"} for k in result.keys("attention")]
    rights = [{"title": f"counterfactual towards {k}", "value": f"counterfactual:{k}"}
              for k in result.keys("counterfactual")]
    rights += [{"title": f"difference towards {k} (HU)", "value": f"difference:{k}"} for k in result.keys("difference")]
    shown = result.shownCounterfactualKey()
    default = f"counterfactual:{shown}" if shown else ""
    return {"overlays": overlays, "rights": rights, "right_default": default}


def result_summary(result, elapsed_s: float = 0.0, warnings=()) -> dict:
    """The panel's result card: prediction, one row per class (label, probability, text, predicted),
    model and method, the probability-per-step plot as SVG ("" without a trajectory)."""
    report = result.report
    model = report.get("model", {})
    # the decision's "abnormal" target is plotted as 1 - p(healthy), healthy being the decision's first target
    parameters = report.get("parameters") or {}
    healthy = (parameters.get("targets") or [None])[0] if parameters.get("output") == "decision" else None
    rows = [{"label": label, "probability": float(p), "text": f"{float(p):.3f}", "predicted": label == result.prediction}
            for label, p in result.probabilities.items()]
    return {
        "prediction": result.prediction,
        "probabilities": rows,
        "probabilities_text": ", ".join(f"{r['label']} {r['text']}" for r in rows),
        "model": f"{model.get('id', '?')} {model.get('version', '')}".strip(),
        "method": report.get("method", ""),
        "elapsed": f"{elapsed_s:.0f} s",
        "warnings": list(warnings),
        "plot_svg": plot_svg.trajectory_svg(report.get("trajectory") or {}, healthy=healthy),
    }
