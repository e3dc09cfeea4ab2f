"""The performance benchmark (issue 8): what ``make bench`` runs. docs/BENCHMARKS.md explains every column.

    .venv/bin/python Testing/benchmarks/run_benchmarks.py --out bench-output            # the full run
    .venv/bin/python Testing/benchmarks/run_benchmarks.py --out /tmp/b --quick          # tiny, for the test
    .venv/bin/python Testing/benchmarks/run_benchmarks.py --out bench-output --only explain,reading

Sections (``--only``): ``explain`` (each case x bundle in a process of its own: stage times, peak memory,
FLOPs and FLOP/s of the counterfactual loop against this machine's measured matmul peak), ``compare``
(batched vs one-target-at-a-time, counterfactual vs the comparison methods, CPU threads 1 vs all),
``gpu`` (CUDA only; "no GPU" otherwise), ``training`` (scans/s and data wait per stage), ``reading``
(a 300-slice DICOM series: ours vs SimpleITK). The cases are generated once into ``--out``/cases.

Prints markdown tables (and the same text to ``--out``/bench.md); writes ``--out``/bench.json
atomically. Progress goes to stderr. Exit status 1 when a section failed (its error is in the JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]

from stats import fmt, fmt_range, median, summary, table  # noqa: E402

SECTIONS = ("explain", "compare", "gpu", "training", "reading")
GIB = 1024.0  # MiB per GiB: peak memory is reported in MiB (ru_maxrss)

#: the issue's targets (2-core CPU)
TARGETS = {"flops_fraction": 0.40, "head_end_to_end_s": 10.0, "thin_peak_rss_gib": 3.0, "batched_speedup": 1.5,
           "read_ratio": 1.0, "data_wait_fraction": 0.05}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------
# explain: one subprocess per run


def run_worker(case: dict, out_dir: Path, *, steps, flops: bool, threads=None, without_acat: bool = False) -> dict:
    cmd = [sys.executable, str(HERE / "explain_worker.py"), "--case", case["path"],
           "--bundle", str(REPO / "Resources" / "Models" / case["bundle"]), "--out", str(out_dir)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if flops:
        cmd.append("--flops")
    if without_acat:
        cmd.append("--without-acat")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"explain_worker failed on {case['name']} (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1][len("BENCH_RESULT "):])


STAGES = ("read_s", "preprocess_s", "classify_s", "counterfactual_s", "map_back_s", "write_s", "explain_s",
          "end_to_end_s")


def run_explain_case(case: dict, out: Path, *, repeats: int, steps, peak_gflops: float,
                     without_acat: bool = False) -> dict:
    runs = []
    for r in range(repeats):
        log(f"bench: explain {case['name']} with {case['bundle']} (run {r + 1}/{repeats})")
        target = out / "explanations" / case["name"]
        try:
            runs.append(run_worker(case, target, steps=steps, flops=(r == 0), without_acat=without_acat))
        finally:
            shutil.rmtree(target, ignore_errors=True)  # a 300-slice explanation is gigabytes
    stage = {}
    for name in STAGES:
        stage[name] = summary([run["timings"].get(name, run.get(name)) for run in runs])
    first = runs[0]
    flops = first.get("counterfactual_flops")
    cf = median(stage["counterfactual_s"])
    gflops = flops / cf / 1e9 if flops and cf else None
    return {"case": case["name"], "bundle": case["bundle"], "size_ijk": first["size_ijk"],
            "spacing_mm": case["spacing_mm"], "chunks": first["chunks"], "targets": first["targets"],
            "steps": first["steps"], "threads": first["threads"], "outputs": first["outputs"],
            "prediction": first["label"], "classifier": first["classifier"], "stages_s": stage,
            "load_s": summary([run["load_s"] for run in runs]),
            "peak_rss_mb": summary([run["peak_rss_mb"] for run in runs]),
            "counterfactual_flops": flops, "counterfactual_gflops_per_s": gflops,
            "fraction_of_matmul_peak": gflops / peak_gflops if gflops and peak_gflops else None,
            "runs": runs}


# ------------------------------------------------------------------------------------------------------
# the report


def explain_tables(results: list[dict], peak: dict, without_acat: bool = False) -> str:
    rows = []
    for r in results:
        s = r["stages_s"]
        rows.append([f"{r['case']} ({'x'.join(map(str, r['size_ijk']))})", r["bundle"],
                     *(fmt_range(s[n]) for n in STAGES),
                     fmt_range(r["peak_rss_mb"], 0), fmt(r["counterfactual_flops"] / 1e9 if r["counterfactual_flops"]
                                                         else None, 1),
                     fmt(r["counterfactual_gflops_per_s"], 1),
                     fmt(100 * r["fraction_of_matmul_peak"] if r["fraction_of_matmul_peak"] else None, 0)])
    headers = ["case", "bundle", "read s", "preprocess s", "classify s", "cf loop s", "saliency+map back s",
               "write s", "explain s", "end to end s", "peak RSS MiB", "cf GFLOP", "cf GFLOP/s",
               f"% of matmul peak ({peak['gflops']:.0f})"]
    note = ("\n\n(--quick: the bundles' ACAT classifiers and their input are left out; the baseline predicts.)"
            if without_acat else "")
    if any(r["counterfactual_flops"] is None for r in results):
        note += ("\n\n(cf GFLOP: \"-\" where the counterfactuals stop early, the default: a FLOP count assumes every "
                 "step; the CPU threads table runs every step and gives the loop's rate.)")
    return "### Explain, per case (median (min-max) of runs)\n\n" + table(headers, rows) + note


def compare_tables(c: dict, peaks: dict) -> str:
    parts = []
    tb = c["targets_batched"]
    parts.append(f"### Batched targets vs one target at a time ({c['case']}, {c['bundle']}, {c['targets']} targets, "
                 f"{c['steps']} steps)\n\n" + table(
                     ["variant", "cf loop s", "GFLOP (every step)", "speed-up"],
                     [["batched (implementation)", fmt_range(tb["batched_s"]), fmt(c["counterfactual_flops"] / 1e9, 1),
                       fmt_range(tb["speedup"])],
                      ["one target at a time", fmt_range(tb["sequential_s"]), fmt(tb["sequential_flops"] / 1e9, 1),
                       "1.00"]])
                 + f"\n\nLargest |difference| of the counterfactual images: "
                   f"{tb['max_abs_counterfactual_difference']:.2e}")
    rows = [[f"{v['images']}" + (" (CPU default)" if k == "default" else ""), fmt_range(v["counterfactual_s"]),
             fmt_range(v["gflops"], 1)] for k, v in c["batch_images"].items()]
    parts.append(f"### Images per batch in the counterfactual loop ({c['case']}; every step run, no early stop)\n\n"
                 + table(["images per batch", "cf loop s", "GFLOP/s"], rows))
    src = c.get("quality_source") or {}
    rows = [[m, fmt_range(v["explain_s"]), fmt(v["hit_score"], 3), fmt(v["reproduction_time_per_scan_s"])]
            for m, v in c["methods"].items()]
    parts.append(f"### Methods ({c['case']}, {c['bundle']}; time: the whole `Explainer.explain` call"
                 + ("" if c.get("classifier", "acat") == "acat" else
                    ", predicting with the baseline: --quick leaves the ACAT classifier and its input out")
                 + ")\n\n"
                 + table(["method", "explain s", "hit score", "reproduction s/scan"], rows)
                 + (f"\n\nQuality: hit score on the phantom test set (n={src.get('n_test')}) from "
                    f"`{src.get('source')}` (command: `{src.get('command')}`)." if src else
                    "\n\nQuality: docs/results/brain/reproduction.json not found."))
    rows = []
    for n, v in c["threads"].items():
        peak = peaks.get(n)
        g = median(v["gflops"])
        rows.append([n, fmt_range(v["counterfactual_s"]), fmt_range(v["gflops"], 1),
                     fmt(peak, 0) if peak else "-", fmt(100 * g / peak if g and peak else None, 0)])
    parts.append("### CPU threads (counterfactual loop; every step run, no early stop)\n\n"
                 + table(["threads", "cf loop s", "GFLOP/s", "matmul peak GFLOP/s", "% of peak"], rows))
    return "\n\n".join(parts)


def gpu_tables(g: dict) -> str:
    if not g.get("available"):
        return "### GPU\n\nno GPU"
    parts = [f"### GPU: {g['device']} ({g['case']}; CUDA-event times; matmul peak fp32 "
             f"{g['matmul_peak_fp32']['gflops']:.0f}, TF32 {g['matmul_peak_tf32']['gflops']:.0f} GFLOP/s)"]
    p = g["precision"]
    parts.append(table(["explain precision", "explain s"], [[k, fmt_range(p[k]["explain_s"], 3)]
                                                            for k in ("fp32", "bf16")])
                 + f"\n\nbf16 saliency max |difference| from fp32: {p['bf16_saliency_max_abs_difference']:.3g}")
    t = g["tf32"]
    parts.append(table(["TF32", "cf loop s", "GFLOP/s"], [[k, fmt_range(t[k]["counterfactual_s"], 3),
                                                            fmt_range(t[k]["gflops"], 0)] for k in ("off", "on")])
                 + f"\n\nTF32 saliency max |difference|: {t['saliency_max_abs_difference']:.3g}")
    comp = g["compile"]
    if "error" in comp:
        parts.append(f"torch.compile: {comp['error']}")
    else:
        parts.append(table(["torch.compile", "cf loop s"], [["off", fmt_range(comp["eager_s"], 3)],
                                                            ["on", fmt_range(comp["compiled_s"], 3)],
                                                            ["on, first call (compiles)", fmt(comp["first_call_s"], 1)]]))
    rows = [[n, fmt_range(v.get("counterfactual_s"), 3), fmt_range(v.get("scans_per_s"), 2),
             fmt(v.get("peak_gpu_memory_mb"), 0)] if "error" not in v else [n, v["error"], "-", "-"]
            for n, v in g["batch_scans"].items()]
    parts.append(table(["scans per batch", "cf loop s", "scans/s", "peak GPU MiB"], rows))
    return "\n\n".join(parts)


def training_tables(t: dict) -> str:
    rows = []
    for stage, v in t["stages"].items():
        rows.append([stage, fmt(v.get("stage_s")), str(v.get("batches", "-")), fmt(v.get("scans_per_s")),
                     fmt(100 * v["data_wait_fraction"], 1) if v.get("data_wait_fraction") is not None else "-"])
    return (f"### Training throughput (CPU, {t['scans']} toy head volumes, batch {t['batch_size']}, "
            f"{t['num_workers']} loader workers, input {t['input']['slices']} x {t['input']['size'][0]} x "
            f"{t['input']['size'][1]})\n\n"
            + table(["stage", "stage s", "batches", "scans/s", "data wait %"], rows))


def reading_tables(r: dict) -> str:
    return (f"### Reading a DICOM series ({r['case']}, {r['slices']} slices)\n\n"
            + table(["reader", "s", "ours / SimpleITK", "same voxels"],
                    [["ACATLogic.io.read_volume", fmt_range(r["ours_s"], 3), fmt_range(r["ratio"]), str(r["same_voxels"])],
                     ["SimpleITK ImageSeriesReader", fmt_range(r["sitk_s"], 3), "1.00", ""]]))


def targets(report: dict) -> list[dict]:
    """Each target of the issue: the measured value and whether it is met."""
    out = []
    explain = {r["case"]: r for r in report.get("explain", {}).get("cases", [])}
    head = explain.get("head40") or explain.get("head12")
    thin = explain.get("head300") or explain.get("head24thin")

    def add(name, value, goal, met, unit=""):
        out.append({"target": name, "value": value, "goal": goal, "unit": unit,
                    "met": None if value is None else bool(met(value))})

    comp = report.get("compare")
    if head:
        fraction = head["fraction_of_matmul_peak"]
        if fraction is None and comp and "threads" in comp:  # early stop: the loop's rate from the threads table
            peaks = report.get("matmul_peak") or {}
            best = max(comp["threads"], key=int)
            peak_gflops = (peaks.get(best) or {}).get("gflops")
            rate = median(comp["threads"][best]["gflops"])
            fraction = rate / peak_gflops if rate and peak_gflops else None
        add("counterfactual loop >= 40% of the measured matmul peak", fraction,
            TARGETS["flops_fraction"], lambda v: v >= TARGETS["flops_fraction"])
        add(f"{head['case']} end to end (read + explain + write) <= 10 s", median(head["stages_s"]["end_to_end_s"]),
            TARGETS["head_end_to_end_s"], lambda v: v <= TARGETS["head_end_to_end_s"], "s")
        add(f"{head['case']} read + explain (no write) <= 10 s",
            (median(head["stages_s"]["read_s"]) or 0) + (median(head["stages_s"]["explain_s"]) or 0),
            TARGETS["head_end_to_end_s"], lambda v: v <= TARGETS["head_end_to_end_s"], "s")
    if thin:
        add(f"{thin['case']} peak memory <= 3 GiB", median(thin["peak_rss_mb"]) / GIB, TARGETS["thin_peak_rss_gib"],
            lambda v: v <= TARGETS["thin_peak_rss_gib"], "GiB")
    if comp and "targets_batched" in comp:
        add("batched targets >= 1.5x one target at a time", median(comp["targets_batched"]["speedup"]),
            TARGETS["batched_speedup"], lambda v: v >= TARGETS["batched_speedup"], "x")
    read = report.get("reading")
    if read and "ratio" in read:
        add("reading the series at least as fast as SimpleITK (time ratio <= 1)", median(read["ratio"]),
            TARGETS["read_ratio"], lambda v: v <= TARGETS["read_ratio"], "x")
    train = report.get("training")
    if train and "stages" in train:
        waits = [v["data_wait_fraction"] for v in train["stages"].values() if v.get("data_wait_fraction") is not None]
        add("training data wait < 5% of step time (worst stage)", max(waits) if waits else None,
            TARGETS["data_wait_fraction"], lambda v: v < TARGETS["data_wait_fraction"])
    return out


def targets_table(items: list[dict], quick: bool) -> str:
    rows = [[t["target"], fmt(t["value"], 3) + (f" {t['unit']}" if t["unit"] else ""), fmt(t["goal"], 2),
             "-" if t["met"] is None else ("met" if t["met"] else "not met")] for t in items]
    note = "\n\n(--quick: tiny cases and few steps; these are not the issue's measurements.)" if quick else ""
    return "### Targets\n\n" + table(["target", "measured", "goal", ""], rows) + note


# ------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench-output")
    parser.add_argument("--quick", action="store_true", help="tiny cases, 2 steps, 1 run, explains without the ACAT classifier: for the test")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 3; --quick 1)")
    parser.add_argument("--big-repeats", type=int, default=1,
                        help="runs of the 300-slice case (default 1: it is there for its peak memory)")
    parser.add_argument("--steps", type=int, default=None,
                        help="counterfactual steps (default: the bundle's, 20; --quick 2)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps if args.steps is not None else (2 if args.quick else None)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from ACATLogic.explain import cpu_threads
    from ACATLogic.io.atomic import atomic_path
    from cases import ensure_cases
    from machine import machine_info, machine_line, matmul_peak

    started = time.perf_counter()
    all_threads = cpu_threads()  # OMP_NUM_THREADS when set (make test shares the CPUs), else the CPUs we may use
    torch.set_num_threads(all_threads)
    info = machine_info()
    log("bench: measuring the fp32 matmul peak")
    n = 512 if args.quick else 2048
    peaks = {str(all_threads): matmul_peak(all_threads, n=n)}
    if all_threads != 1:
        peaks["1"] = matmul_peak(1, n=n)
    peak = peaks[str(all_threads)]
    report: dict = {"command": " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "quick": args.quick, "repeats": repeats, "steps": steps, "machine": info,
                    "matmul_peak": peaks, "errors": {}}
    cases = ensure_cases(out / ("cases-quick" if args.quick else "cases"), args.quick, log)
    report["cases"] = cases
    names = list(cases)
    head, thin = cases[names[0]], cases[names[1]]
    texts = [machine_line(info, peak)]

    def section(name, fn):
        if name not in sections:
            return
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others' results
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"bench: section {name} failed:\n{traceback.format_exc()}")
            texts.append(f"### {name}\n\nfailed: {type(exc).__name__}: {exc}")

    def explain_section():
        results = []
        for name, case in cases.items():
            runs = args.big_repeats if case is thin else repeats
            results.append(run_explain_case({**case, "name": name}, out, repeats=runs, steps=steps,
                                            peak_gflops=peak["gflops"], without_acat=args.quick))
        texts.append(explain_tables(results, peak, without_acat=args.quick))
        return {"cases": results}

    def compare_section():
        from comparisons import run_comparisons

        result = run_comparisons({**head, "name": names[0]}, REPO / "Resources" / "Models" / head["bundle"],
                                 repeats=repeats, steps=steps, log=log, with_acat=not args.quick)
        texts.append(compare_tables(result, {k: v["gflops"] for k, v in peaks.items()}))
        return result

    def gpu_section():
        from gpu import run_gpu

        result = run_gpu({**head, "name": names[0]}, REPO / "Resources" / "Models" / head["bundle"],
                         repeats=repeats, steps=steps, log=log)
        texts.append(gpu_tables(result))
        return result

    def training_section():
        from training_bench import run_training

        work = out / "training"
        shutil.rmtree(work, ignore_errors=True)
        result = run_training(work, quick=args.quick, log=log)
        texts.append(training_tables(result))
        return result

    def reading_section():
        from reading import run_reading

        result = run_reading({**thin, "name": names[1]}, repeats=max(repeats, 3), log=log)
        texts.append(reading_tables(result))
        return result

    section("explain", explain_section)
    section("compare", compare_section)
    section("gpu", gpu_section)
    section("training", training_section)
    section("reading", reading_section)
    report["targets"] = targets(report)
    texts.append(targets_table(report["targets"], args.quick))
    report["wall_s"] = time.perf_counter() - started
    texts.append(f"Command: `{report['command']}`; {report['date']}; whole run {report['wall_s']:.0f} s.")
    text = "\n\n".join(texts) + "\n"
    print(text)
    with atomic_path(out / "bench.md", overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_path(out / "bench.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    log(f"bench: wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
