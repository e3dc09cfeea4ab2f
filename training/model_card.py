"""The Hugging Face model-card layout of a bundle's README.md (`training.export` writes it): YAML front matter -
``license``, ``tags``, ``datasets``, ``metrics`` and the test metrics as a ``model-index`` - then the text, so
that a bundle folder can be published on the Hub as it is.
"""

from __future__ import annotations

import re

#: licence names as the Hugging Face Hub spells them (its ``license:`` field); any other is "other"
HUB_LICENCES = ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "gpl-2.0", "gpl-3.0", "lgpl-3.0", "mpl-2.0",
                "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "openrail")


def hub_front_matter(card: dict, *, simulated: bool, datasets=()) -> str:
    """The YAML front matter of a Hugging Face model card: licence, tags, datasets, metrics and the test metrics
    as a model-index, so that the bundle folder can be published as it is."""
    import yaml

    licence = str(card["licence"]).strip().lower()
    front = {"license": licence if licence in HUB_LICENCES else "other"}
    if front["license"] == "other":
        front["license_name"] = slug(card["licence"])
    tests = [m for m in card["metrics"] if m["split"] == "test"]
    front.update({
        "library_name": "acat", "pipeline_tag": "image-classification",
        "tags": ["acat", "medical-imaging", "ct", "explainability", "counterfactual", "saliency", "pytorch",
                 "safetensors", "research-only"] + (["simulated-data"] if simulated else []),
        "datasets": list(datasets), "metrics": sorted({m["name"] for m in tests}),
        "model-index": [{"name": card["id"], "results": [{
            "task": {"type": "image-classification", "name": card["task"]},
            "dataset": {"type": (list(datasets) or ["data"])[0], "name": card["training_data"].split(":")[0],
                        "split": "test"},
            "metrics": [{"type": m["name"], "value": round(float(m["value"]), 6), "name": f"{m['model']} {m['name']}"}
                        for m in tests]}]}]})
    return "---\n" + yaml.safe_dump(front, sort_keys=False, default_flow_style=False, allow_unicode=True) + "---\n"


def slug(text: str) -> str:
    """A name as the Hub writes ids: lower case letters, digits, "." and "-"."""
    return re.sub(r"[^a-z0-9.-]+", "-", str(text).lower()).strip("-") or "unknown"
