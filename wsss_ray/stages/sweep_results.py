"""A finished sweep's files: ``sweeps/<name>/results.csv`` / ``.parquet``, ``summary.json`` and
one mIoU-against-knob plot per knob. No Ray: it reads Tune's result grid as plain objects."""
from __future__ import annotations

import pyarrow as pa

from wsss_ray.rundir import RunDir
from wsss_ray.stages.evaluate import save_figure
from wsss_ray.store import write_table_uri


def result_rows(grid, knobs) -> list[dict]:
    rows = []
    for res in grid:
        m = res.metrics or {}
        row = {"trial_id": m.get("trial_id", ""), **{k: res.config.get(k) for k in knobs}}
        for key in ("miou", "best_threshold", "sel_miou", "sel_threshold", "report_miou", "images", "complete",
                    "training_iteration", "time_total_s", "cpu_s"):
            row[key] = m.get(key)
        row["error"] = str(res.error)[:300] if res.error else ""
        row["trial_dir"] = res.path
        rows.append(row)
    return rows


def write_results(run: RunDir, name: str, rows: list[dict], summary: dict, knobs) -> None:
    import pandas as pd
    frame = pd.DataFrame(rows)
    run.write_text(run.uri("sweeps", name, "results.csv"), frame.to_csv(index=False))
    write_table_uri(pa.Table.from_pandas(frame, preserve_index=False), run.uri("sweeps", name, "results.parquet"))
    run.write_json(run.uri("sweeps", name, "summary.json"), summary)
    for knob in knobs:
        plot_knob(rows, knob, run.uri("sweeps", name, f"miou_vs_{knob}.png"))


def plot_knob(rows: list[dict], knob: str, png_path: str) -> None:
    """Final mIoU against one knob; hollow markers are trials the scheduler stopped early."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    for complete, style in ((True, {"marker": "o"}), (False, {"marker": "o", "facecolors": "none"})):
        pts = [(r[knob], r["miou"]) for r in rows if r.get("miou") is not None and bool(r.get("complete")) == complete]
        if pts:
            ax.scatter(*zip(*pts), edgecolors="C0", label="complete" if complete else "stopped early", **style)
    ax.set_xlabel(knob)
    ax.set_ylabel("mIoU (best threshold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png_path)
