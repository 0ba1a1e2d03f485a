"""One results table for a run: every method's best-threshold seed scores, the paired-bootstrap
interval of its difference to a baseline (CAM), and the fair protocol's figure (threshold
chosen on the selection split, mIoU on the report split). Writes ``eval/results_table.json``,
``eval/results_table.md`` and ``eval/results_table.png`` (the differences with their intervals).

All methods are scored on the images every one of them has maps for, so the rows and the
pairs compare the same images."""
from __future__ import annotations

import numpy as np

from wsss_ray.bootstrap import paired_bootstrap
from wsss_ray.rundir import RunDir, evaluable_images, run_config
from wsss_ray.selection import best_threshold, fair_protocol, split_selection_report
from wsss_ray.stages.evaluate import per_image_counts, save_figure
from wsss_ray.store import list_shards, open_fs


def methods_with_maps(run: RunDir) -> list[str]:
    """Every ``maps/<method>`` directory that holds shards, baseline-first order left to the caller."""
    import pyarrow.fs as pafs
    fs, path = open_fs(run.uri("maps"))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and list_shards(fs, i.path))


def on_shared_images(per_method: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, dict]:
    """(ids every method scored, ascending; each method's counts on those ids in that order)."""
    shared = np.asarray(sorted(set.intersection(*(set(ids.tolist()) for ids, _ in per_method.values()))), np.int64)
    return shared, {m: counts[np.isin(ids, shared)] for m, (ids, counts) in per_method.items()}


def method_row(method: str, thresholds, counts: np.ndarray, selection: np.ndarray) -> dict:
    """Papers' protocol on all images, fair protocol on the selection / report split."""
    papers = best_threshold(thresholds, counts.sum(0))
    fair = fair_protocol(thresholds, counts[selection].sum(0), counts[~selection].sum(0),
                         int(selection.sum()), int((~selection).sum()))
    return {"method": method, "threshold": papers["threshold"], "miou": papers["miou"], "fp": papers["fp"],
            "fn": papers["fn"], "precision": papers["precision"], "recall": papers["recall"],
            "fair_threshold": fair["selection"]["threshold"], "fair_miou": fair["report"]["miou"]}


def results_table(run: RunDir, methods: list[str] | None = None, baseline: str = "cam", resamples: int = 1000,
                  seed: int = 0, selection_fraction: float = 0.5, split_seed: int = 0) -> dict:
    """The table as a dict (also written as json, markdown and a plot under ``eval/``)."""
    methods = [baseline, *[m for m in (methods or methods_with_maps(run)) if m != baseline]]
    thresholds = list(run_config(run)["eval"].thresholds)
    ids, counts = on_shared_images({m: per_image_counts(run, m, thresholds) for m in methods})
    labels_of = dict(zip(*evaluable_images(run)[:2]))
    labelled = np.isin(ids, list(labels_of))            # an image with a mask but no tags has no split stratum
    ids, counts = ids[labelled], {m: c[labelled] for m, c in counts.items()}
    if len(ids) < 2:
        raise ValueError(f"the methods {methods} share {len(ids)} scored image(s): need two or more")
    chosen, _ = split_selection_report(ids.tolist(), [labels_of[i] for i in ids], selection_fraction, split_seed)
    selection = np.isin(ids, chosen)
    rows = []
    for m in methods:
        row = method_row(m, thresholds, counts[m], selection)
        if m != baseline:
            row["vs_baseline"] = paired_bootstrap(counts[m], counts[baseline], resamples, seed)
        rows.append(row)
    result = {"baseline": baseline, "num_images": len(ids), "num_selection": int(selection.sum()),
              "selection_fraction": selection_fraction, "split_seed": split_seed, "thresholds": thresholds,
              "rows": rows}
    run.write_json(run.uri("eval", "results_table.json"), result)
    run.write_text(run.uri("eval", "results_table.md"), markdown(result))
    plot_differences(result, run.uri("eval", "results_table.png"))
    return result


def markdown(result: dict) -> str:
    base = result["baseline"]
    head = (f"| method | best thr | mIoU | precision | recall | FP | FN | - {base} (95% CI) | "
            f"fair thr | fair mIoU |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in result["rows"]:
        d = r.get("vs_baseline")
        diff = f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "(baseline)"
        lines.append(f"| {r['method']} | {r['threshold']:.2f} | {r['miou']:.4f} | {r['precision']:.4f} | "
                     f"{r['recall']:.4f} | {r['fp']:.4f} | {r['fn']:.4f} | {diff} | "
                     f"{r['fair_threshold']:.2f} | {r['fair_miou']:.4f} |")
    resamples = next((r["vs_baseline"]["resamples"] for r in result["rows"] if "vs_baseline" in r), 0)
    note = (f"\n{result['num_images']} images; difference to {base}: paired bootstrap over images, "
            f"{resamples} resamples, best threshold re-picked in each; fair: threshold chosen on "
            f"{result['num_selection']} selection images, mIoU on the other {result['num_images'] - result['num_selection']}.\n")
    return head + "\n".join(lines) + "\n" + note


def plot_differences(result: dict, png_path: str) -> None:
    """Each method's mIoU difference to the baseline with its 95% interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if "vs_baseline" in r]
    fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.4 * max(len(rows), 1)), dpi=110)
    for y, r in enumerate(rows):
        d = r["vs_baseline"]
        ax.errorbar(d["difference"], y, xerr=[[d["difference"] - d["low"]], [d["high"] - d["difference"]]],
                    fmt="o", color="C0" if d["low"] > 0 else ("C3" if d["high"] < 0 else "C7"), capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
    ax.set_xlabel(f"mIoU - {result['baseline']} (paired bootstrap 95% interval)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, png_path)
