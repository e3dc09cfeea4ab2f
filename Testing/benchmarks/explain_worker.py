"""One timed ``acat explain`` of one case, in a process of its own (so its peak memory is its own).

    .venv/bin/python Testing/benchmarks/explain_worker.py --case DIR --bundle Resources/Models/NAME --out DIR

The same steps as ``acat explain`` (ACATCli/commands.py): `read_volume`, `Explainer.explain`,
`write_explanation`. Prints one line ``BENCH_RESULT {json}``: the stage times (s), the Explainer's own
split (preprocess, counterfactual loop, classify, map back), the peak resident memory of this process
(VmHWM) and, with ``--flops``, the counterfactual loop's FLOPs (counted afterwards on the meta
device, `flops.py`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. ``ru_maxrss`` does not: a child
    inherits the RSS its parent had when it forked, so it would report the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes; elsewhere KiB
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--out", required=True, help="the explanation's output folder (replaced)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=None, help="counterfactual steps (default: the bundle's)")
    parser.add_argument("--method", default="counterfactual")
    parser.add_argument("--flops", action="store_true", help="count the counterfactual loop's FLOPs afterwards")
    parser.add_argument("--without-acat", action="store_true",
                        help="leave the bundle's ACAT classifier out (predict with the baseline): --quick's runs")
    args = parser.parse_args(argv)

    import torch

    from ACATLogic.bundle import load_bundle, without_acat
    from ACATLogic.explain import Explainer
    from ACATLogic.io import read_volume
    from ACATLogic.outputs import write_explanation

    result = {"rss_after_imports_mb": round(peak_rss_mb(), 1)}
    t0 = time.perf_counter()
    bundle = load_bundle(args.bundle)
    if args.without_acat:
        bundle = without_acat(bundle)
    explainer = Explainer(bundle, device="cpu", threads=args.threads)
    result["load_s"] = time.perf_counter() - t0
    result["threads"] = torch.get_num_threads()

    t0 = time.perf_counter()
    volume = read_volume(args.case)
    result["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    explanation = explainer.explain(volume, method=args.method, steps=args.steps)
    result["explain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_explanation(explanation, Path(args.out), bundle=bundle, volume=volume, overwrite=True,
                      extra_timings={"read_s": round(result["read_s"], 4)})
    result["write_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["end_to_end_s"] = result["read_s"] + result["explain_s"] + result["write_s"]
    result["timings"] = dict(explanation.timings)
    result["size_ijk"] = list(volume.size_ijk)
    result["chunks"] = explanation.preprocessing["chunks"]
    result["slices_per_chunk"] = explanation.preprocessing["slices_per_chunk"]
    result["targets"] = len(explanation.parameters["targets"])
    result["steps"] = explanation.parameters["steps"]
    result["label"] = explanation.label
    result["classifier"] = explanation.classifier
    result["outputs"] = 1 + len(explanation.counterfactuals) + len(explanation.attention)

    # a FLOP count assumes every step; with early stop (the default) the loop runs fewer, so the count would
    # overstate the rate: left out (the comparison tables run every step and give the rate)
    if args.flops and args.method == "counterfactual" and not explanation.parameters["early_stop"]:
        from flops import counterfactual_flops

        spec = bundle.spec
        params = explanation.parameters
        result["counterfactual_flops"] = counterfactual_flops(
            explainer.fast_baseline, explainer.fast_autoencoder,
            (result["chunks"], spec.slices, 1, *spec.size), explainer.counterfactual_targets(params),
            len(bundle.labels), steps=params["steps"], alpha=params["alpha"], step_size=params["step_size"],
            optimizer=params["optimizer"], reference=params["reference"], start=params["start"])
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
