"""Turn benchmark samples into the results document, the stdout table, the targets and a chart.

Ratios are always "how many times faster ours is": ours/peer for throughputs, peer/ours for
durations, so > 1 means our mount wins. Every ratio and target uses medians from the same
run. The memory target is computed from the filesystem's own defaults, so it follows them.
"""

from __future__ import annotations

import statistics
from typing import Any

from tests.perf.clients import OURS, PEERS, RAW
from tests.perf.workloads import GiB, MiB, Workload

MEMORY_SLACK = 100 * MiB
CPU_PER_GIB_LIMIT = 0.9

# Issue 12's targets: (workload, comparator, minimum ratio), ratios as "times faster", so
# "ours takes <= 0.4x boto3's time" is a ratio >= 2.5 and "TTFB <= 1.5x raw" one >= 1/1.5.
# Comparator "fastest-peer" = the faster of s3fs/rclone (whichever were measured).
RATIO_TARGETS: list[tuple[str, str, float]] = [
    ("seq_read", RAW, 0.8), ("seq_read", "s3fs", 1.3),
    ("seq_read_dio", RAW, 0.9),
    ("seq_read_4", RAW, 0.8),
    ("ttfb", RAW, 1 / 1.5),
    ("seq_write", RAW, 1.2), ("seq_write", "s3fs", 1.2),
    ("ls", RAW, 2.5), ("ls_l", RAW, 2.5),
    ("small_seq", "s3fs", 1.25), ("small_par8", "s3fs", 1.25),
    ("cache_seq_read", RAW, 1.5),
]
# (workload, minimum): our second pass against our own first pass, from each sample's
# "speedup" (the cache workloads read the same data twice on one mount).
SPEEDUP_TARGETS: list[tuple[str, float]] = [("cache_seq_read", 2.0), ("cache_small", 2.0)]
# (workload, other workload, minimum): our figure in one against our figure in the other.
CROSS_TARGETS: list[tuple[str, str, float]] = [("cache_rand_read", "rand_read", 5.0)]
CPU_TARGETS = ("seq_read", "seq_read_dio", "seq_read_4")
RSS_TARGETS = ("seq_read", "seq_read_dio", "seq_read_4")  # "with one reader and with four"


def memory_limits() -> dict[str, Any]:
    """The RSS budget: 2 x read part size x prefetch concurrency + 100 MiB, from the defaults."""
    from driver.fs.filesystem import Filesystem
    from driver.options import MountOptions

    options = MountOptions()
    # Constructing the filesystem does no I/O; it is where prefetch_parallel is decided.
    parallel = Filesystem(None, options).prefetch_parallel  # type: ignore[arg-type]
    limit = 2 * options.read_part_size * parallel + MEMORY_SLACK
    return {"read_part_size": options.read_part_size, "prefetch_parallel": parallel,
            "max_threads": options.max_threads, "rss_limit_bytes": limit,
            "rss_limit_mib": limit / MiB,
            "formula": "2 x read_part_size x prefetch_parallel + 100 MiB",
            "cpu_s_per_gib_limit": CPU_PER_GIB_LIMIT}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _speedup(ours: float | None, other: float | None, higher_is_better: bool) -> float | None:
    if not ours or not other:
        return None
    return ours / other if higher_is_better else other / ours


def summarize(workload: Workload, runs: dict[str, Any]) -> dict[str, Any]:
    samples = runs["samples"]
    values = [s["value"] for s in samples]
    summary: dict[str, Any] = {"median": _median(values), "samples": values,
                               "runs": samples, "errors": runs["errors"]}
    if samples and "cpu_s" in samples[0]:
        cpu = [s["cpu_s"] for s in samples]
        rss = [s["peak_rss"] for s in samples]
        summary.update(cpu_s_median=_median(cpu), cpu_s_samples=cpu,
                       peak_rss_mib_median=_median(rss) / MiB, peak_rss_mib_max=max(rss) / MiB,
                       peak_rss_mib_samples=[r / MiB for r in rss])
        per_gib = [s["cpu_s"] / (s["bytes"] / GiB) for s in samples if s["bytes"] >= MiB]
        if per_gib:
            summary.update(cpu_s_per_gib_median=_median(per_gib), cpu_s_per_gib_samples=per_gib)
        fetched = [sum(s["store_calls"].get(name, {}).get("bytes", 0)
                       for name in ("get_range", "get_range_into")) / s["bytes"]
                   for s in samples if "store_calls" in s and s["bytes"] >= MiB]
        if workload.group == "read" and fetched:
            # Bytes our mount fetched from the store per byte delivered: > 1 = over-fetching.
            summary["read_amplification_median"] = _median(fetched)
    return summary


def build(meta: dict[str, Any], versions: dict[str, str], workloads: list[Workload],
          results: dict[str, dict[str, dict[str, Any]]], measured: list[str],
          skipped: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "meta": meta, "versions": versions,
        "clients": {**{name: "measured" for name in measured},
                    **{name: f"skipped: {why}" for name, why in skipped.items()}},
        "limits": memory_limits(), "workloads": {},
    }
    for workload in workloads:
        per_client = {name: summarize(workload, runs)
                      for name, runs in results.get(workload.name, {}).items()}
        ours = per_client.get(OURS, {}).get("median")
        ratios = {}
        for name, summary in per_client.items():
            if name != OURS:
                ratio = _speedup(ours, summary["median"], workload.higher_is_better)
                if ratio is not None:
                    ratios[f"vs_{name}"] = ratio
        document["workloads"][workload.name] = {
            "group": workload.group, "unit": workload.unit,
            "higher_is_better": workload.higher_is_better,
            "description": workload.description, "results": per_client, "ratios": ratios,
        }
    document["ratio_meaning"] = ("times faster than the comparator: ours/theirs for MB/s, "
                                 "theirs/ours for seconds; > 1 means cloudbucket is faster")
    document["targets"] = evaluate_targets(document)
    return document


def _target(name: str, status: str, detail: str, value: float | None = None,
            threshold: float | None = None) -> dict[str, Any]:
    return {"name": name, "status": status, "value": value, "threshold": threshold,
            "detail": detail}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.1f} {unit}"


def evaluate_targets(document: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    workloads = document["workloads"]
    for name, comparator, minimum in RATIO_TARGETS:
        if name not in workloads:
            continue
        entry = workloads[name]
        results, unit = entry["results"], entry["unit"]
        ours = results.get(OURS, {}).get("median")
        if comparator == "fastest-peer":
            peers = {p: results[p]["median"] for p in PEERS
                     if p in results and results[p]["median"] is not None}
            if not peers:
                targets.append(_target(f"{name} no slower than the faster peer", "SKIP",
                                       "no peer measured"))
                continue
            pick = max if entry["higher_is_better"] else min
            comparator = pick(peers, key=peers.__getitem__)
            label = f"{name} no slower than the faster peer ({comparator})"
        else:
            label = f"{name} >= {minimum:.3g}x {comparator}"
        theirs = results.get(comparator, {}).get("median")
        ratio = _speedup(ours, theirs, entry["higher_is_better"])
        if ratio is None:
            targets.append(_target(label, "SKIP", f"{comparator} or ours not measured",
                                   threshold=minimum))
            continue
        status = "PASS" if ratio >= minimum else "MISS"
        targets.append(_target(label, status, f"{ratio:.2f}x (ours {_fmt(ours, unit)}, "
                               f"{comparator} {_fmt(theirs, unit)})", ratio, minimum))
    for name, minimum in SPEEDUP_TARGETS:
        ours = workloads.get(name, {}).get("results", {}).get(OURS, {})
        speedups = [run["speedup"] for run in ours.get("runs", ()) if "speedup" in run]
        if not speedups:
            continue
        ratio = _median(speedups)
        assert ratio is not None
        targets.append(_target(f"{name} second pass >= {minimum}x the first", "PASS"
                               if ratio >= minimum else "MISS", f"{ratio:.2f}x (median)",
                               ratio, minimum))
    for name, other, minimum in CROSS_TARGETS:
        if name not in workloads or other not in workloads:
            continue
        entry = workloads[name]
        ratio = _speedup(entry["results"].get(OURS, {}).get("median"),
                         workloads[other]["results"].get(OURS, {}).get("median"),
                         entry["higher_is_better"])
        label = f"{name} >= {minimum}x {other} (ours)"
        if ratio is None:
            targets.append(_target(label, "SKIP", "not measured", threshold=minimum))
            continue
        targets.append(_target(label, "PASS" if ratio >= minimum else "MISS",
                               f"{ratio:.2f}x", ratio, minimum))
    limit_mib = document["limits"]["rss_limit_mib"]
    for name, entry in workloads.items():
        if name not in RSS_TARGETS:
            continue
        ours = entry["results"].get(OURS, {})
        peak = ours.get("peak_rss_mib_max")
        if peak is None:
            continue
        status = "PASS" if peak <= limit_mib else "MISS"
        targets.append(_target(f"{name} peak RSS <= {limit_mib:.0f} MiB", status,
                               f"{peak:.0f} MiB (max of {len(ours['samples'])} runs)",
                               peak, limit_mib))
    for name in CPU_TARGETS:
        ours = workloads.get(name, {}).get("results", {}).get(OURS, {})
        per_gib = ours.get("cpu_s_per_gib_median")
        if per_gib is None:
            continue
        status = "PASS" if per_gib <= CPU_PER_GIB_LIMIT else "MISS"
        targets.append(_target(f"{name} FUSE CPU <= {CPU_PER_GIB_LIMIT} CPU-s/GiB", status,
                               f"{per_gib:.2f} CPU-s/GiB", per_gib, CPU_PER_GIB_LIMIT))
    return targets


def describe_sample(workload: Workload, entry: dict[str, Any]) -> str:
    text = _fmt(entry["value"], workload.unit)
    if workload.unit != "s":
        text += f" ({entry['seconds']:.2f} s)"
    if "cpu_s" in entry:
        text += f", server cpu {entry['cpu_s']:.2f} s, peak rss {entry['peak_rss'] / MiB:.0f} MiB"
    return text


def table(document: dict[str, Any]) -> str:
    clients = list(document["clients"])
    lines = ["", "Medians of cold runs. cpu s, rss MiB: the FUSE server's CPU seconds (median) "
             "and peak RSS (max);", "fetched: bytes our mount GOT from the store per byte "
             "delivered (--count-requests only).", ""]
    header = f"{'workload':12} {'client':12} {'median':>13} {'min':>11} {'max':>11} " \
             f"{'cpu s':>7} {'rss MiB':>8} {'fetched':>8} {'runs':>5}"
    lines += [header, "-" * len(header)]
    for name, entry in document["workloads"].items():
        unit = entry["unit"]
        for client in clients:
            res = entry["results"].get(client)
            if res is None:
                continue
            if not res["samples"]:
                lines.append(f"{name:12} {client:12} {'FAILED':>13}  {res['errors'][:1]}")
                continue
            cpu = res.get("cpu_s_median")
            rss = res.get("peak_rss_mib_max")
            amp = res.get("read_amplification_median")
            lines.append(
                f"{name:12} {client:12} {_fmt(res['median'], unit):>13} "
                f"{_fmt(min(res['samples']), unit):>11} {_fmt(max(res['samples']), unit):>11} "
                f"{'' if cpu is None else f'{cpu:.2f}':>7} "
                f"{'' if rss is None else f'{rss:.0f}':>8} "
                f"{'' if amp is None else f'{amp:.2f}x':>8} {len(res['samples']):>5}")
    lines += ["", "Ratios (times faster than the comparator; > 1 = cloudbucket faster)", ""]
    for name, entry in document["workloads"].items():
        if entry["ratios"]:
            ratios = "  ".join(f"{k.removeprefix('vs_')} {v:.3g}x"
                               for k, v in entry["ratios"].items())
            lines.append(f"{name:12} {ratios}")
    lines += ["", "Targets", ""]
    for target in document["targets"]:
        lines.append(f"{target['status']:4}  {target['name']}: {target['detail']}")
    skipped = {k: v for k, v in document["clients"].items() if v != "measured"}
    for name, why in skipped.items():
        lines.append(f"note: {name} {why}")
    lines.append("")
    return "\n".join(lines)


def chart(document: dict[str, Any], path: str) -> None:
    """Grouped bars of ratios per workload and comparator, log scale, line at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in document["workloads"].items() if e["ratios"]]
    comparators = [c for c in (RAW, *PEERS)
                   if any(f"vs_{c}" in document["workloads"][n]["ratios"] for n in names)]
    fig, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 4.5))
    width = 0.8 / max(1, len(comparators))
    for index, comparator in enumerate(comparators):
        xs, ys = [], []
        for position, name in enumerate(names):
            ratio = document["workloads"][name]["ratios"].get(f"vs_{comparator}")
            if ratio:
                xs.append(position + (index - (len(comparators) - 1) / 2) * width)
                ys.append(ratio)
        axis.bar(xs, ys, width, label=f"vs {comparator}")
    axis.axhline(1.0, color="black", linewidth=0.8)
    if names:
        axis.set_yscale("log")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_ylabel("times faster (> 1: cloudbucket faster)")
    meta = document["meta"]
    axis.set_title(f"cloudbucket-csi vs peers ({meta['size_bytes'] // MiB} MiB objects, "
                   f"median of {meta['repeat']})")
    if comparators:
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
