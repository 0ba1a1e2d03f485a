"""Sweeps on Ray Tune: the LPCAM post-processing sweep over a cached feature pass, the ReCAM
training sweep (a TorchTrainer per trial), and the fair selection/report threshold protocol."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from wsss_ray.metrics import class_counts
from wsss_ray.selection import choose_config, fair_protocol, split_selection_report

# what a sweep reads from a finished run (copied so the shared quick run is left untouched)
RUN_PARTS = ("config.json", "manifest", "checkpoints/cam", "maps/cam", "maps/lpcam", "eval/lpcam.json",
             "prototypes")


@pytest.fixture
def sweep_run(quick_run, tmp_path):
    src, cfg, _ = quick_run
    dst = tmp_path / "run"
    for part in RUN_PARTS:
        s, d = Path(src, part), dst / part
        d.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if s.is_dir() else shutil.copy2)(s, d)
    return str(dst), cfg


# ----------------------------------------------------------------------------- pure: the split

def _labelled(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, n, replace=False).tolist()
    labels = [sorted(rng.choice(6, rng.integers(1, 3), replace=False).tolist()) for _ in ids]
    return ids, labels


@pytest.mark.parametrize("n,seed", [(2, 0), (3, 1), (17, 2), (96, 3), (500, 4)])
def test_selection_and_report_never_overlap_and_cover_every_image(n, seed):
    ids, labels = _labelled(n, seed)
    sel, rep = split_selection_report(ids, labels, 0.5, seed)
    assert not set(sel) & set(rep)
    assert sorted(sel + rep) == sorted(ids)
    assert sel and rep
    assert (sel, rep) == split_selection_report(ids[::-1], labels[::-1], 0.5, seed)     # order-free, seeded


def test_split_is_stratified_by_label_set():
    ids, labels = _labelled(400, 7)
    sel, _ = split_selection_report(ids, labels, 0.5, 0)
    sel = set(sel)
    groups = {}
    for i, lab in zip(ids, labels):
        groups.setdefault(tuple(lab), []).append(i)
    for members in groups.values():
        if len(members) >= 2:            # every repeated label set lands on both sides
            inside = sum(i in sel for i in members)
            assert 1 <= inside <= len(members) - 1
            assert abs(inside - len(members) / 2) <= 1


def test_split_refuses_too_few_or_duplicate_images():
    with pytest.raises(ValueError):
        split_selection_report([1], [[0]])
    with pytest.raises(ValueError):
        split_selection_report([1, 1], [[0], [0]])


def test_fair_protocol_chooses_on_selection_and_reports_on_report():
    # 2 thresholds, 1 class: the selection subset prefers threshold 0, the report subset 1
    good, bad = np.array([[5, 0], [0, 5]]), np.array([[0, 5], [5, 0]])
    sel = np.stack([good, bad])
    rep = np.stack([bad, good])
    out = fair_protocol([0.1, 0.2], class_counts(sel), class_counts(rep), 3, 4)
    assert out["selection"]["threshold"] == 0.1 and out["selection"]["miou"] == 1.0
    assert out["report"]["threshold"] == 0.1 and out["report"]["miou"] == 0.0
    assert out["report"]["oracle_miou"] == 1.0
    assert out["papers_protocol"]["num_images"] == 7
    assert choose_config([{"m": 0.1}, {"m": float("nan")}, {"m": 0.3}], "m") == {"m": 0.3}


# ----------------------------------------------------------------------------- post-processing sweep

def test_lpcam_sweep_two_trials(sweep_run):
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.sweep import KNOBS, run_lpcam_sweep
    from wsss_ray.stages.sweep_cache import sweep_maps
    from wsss_ray.store import decode_maps
    run_dir, cfg = sweep_run
    # fifo: both trials run to the end (ASHA could stop either one at its first milestone)
    summary = run_lpcam_sweep(run_dir, num_samples=2, search="random", scheduler="fifo", name="t",
                              reports=3)
    out = Path(run_dir, "sweeps", "t")
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 2 and len(pq.read_table(out / "results.parquet")) == 2
    assert set(KNOBS) | {"miou", "best_threshold", "sel_miou", "report_miou"} <= set(rows.columns)
    assert rows["miou"].notna().all() and rows["complete"].all() and (rows["training_iteration"] == 3).all()
    # TensorBoard event files, one per trial, under <run-dir>/sweeps/<name>/
    assert len(list(out.glob("*/events.out.tfevents.*"))) == 2
    assert all((out / f"miou_vs_{k}.png").exists() for k in KNOBS)
    # the first trial is the run's own config: the papers-protocol mIoU matches the run's evaluation
    base = rows[rows["trial_id"].str.endswith("_00000")].iloc[0]
    assert base["tau"] == cfg.lpcam.tau and base["k"] == cfg.lpcam.k
    reference = json.loads(Path(run_dir, "eval", "lpcam.json").read_text())["best"]["miou"]
    assert bool(base["complete"]) and abs(base["miou"] - reference) < 2e-3
    assert summary["cache"]["bytes_fused"] > 0
    # and its maps equal the extraction stage's LPCAM maps within one storage level
    mine = sweep_maps(RunDir(run_dir), cfg.lpcam)
    theirs = {r["image_id"]: decode_maps(r["data"], r["map_shape"])
              for r in pq.read_table(Path(run_dir, "maps", "lpcam")).to_pylist()}
    assert set(mine) == set(theirs)
    worst = max(float(np.abs(mine[i] - theirs[i]).max()) for i in mine)
    assert worst <= 1 / 255 + 1e-6


def test_sweep_from_the_command_line_on_dotted_keys(sweep_run):
    from wsss_ray import cli
    run_dir, cfg = sweep_run
    assert cli.main(["sweep", "--run-dir", run_dir, "-s", "lpcam.tau=[0.1,0.2]", "-s", "lpcam.k=[4]",
                     "--name", "dotted"]) == 0
    rows = pd.read_csv(Path(run_dir, "sweeps", "dotted", "results.csv"))
    assert sorted(rows["tau"]) == [0.1, 0.2] and set(rows["k"]) == {4} and rows["complete"].all()
    assert set(rows["mu_f"]) == {cfg.lpcam.mu_f}            # a knob the space leaves out: the run's own


# ----------------------------------------------------------------------------- fair evaluation

def test_evaluate_fair_writes_both_protocols(sweep_run):
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.fair_eval import evaluate_fair
    run_dir, _ = sweep_run
    result = evaluate_fair(RunDir(run_dir), "lpcam")
    stored = json.loads(Path(run_dir, "eval", "lpcam_fair.json").read_text())
    assert {"selection", "report", "papers_protocol"} <= set(stored)
    reference = json.loads(Path(run_dir, "eval", "lpcam.json").read_text())
    # selection + report = all images, so the papers' protocol reproduces the stage's number
    assert result["papers_protocol"]["num_images"] == reference["num_images"]
    assert result["papers_protocol"]["miou"] == pytest.approx(reference["best"]["miou"], abs=1e-12)
    assert result["report"]["threshold"] == result["selection"]["threshold"]


# ----------------------------------------------------------------------------- training sweep

def test_recam_sweep_two_trials(sweep_run):
    from wsss_ray.stages.sweep import run_recam_sweep
    run_dir, _ = sweep_run
    summary = run_recam_sweep(run_dir, num_samples=2, name="r", epochs=1, num_workers=1, max_concurrent=2)
    rows = pd.read_csv(Path(run_dir, "sweeps", "r", "results.csv"))
    assert len(rows) == 2 and rows["complete"].all() and rows["miou"].between(0, 1).all()
    assert summary["complete"] == 2
    for trial_id in rows["trial_id"]:
        name = f"recam_trial_{trial_id}"
        assert Path(run_dir, "checkpoints", name, "model.pt").exists()          # the TorchTrainer's model
        assert any(Path(run_dir, "checkpoints", name, "epochs").glob("epoch-*/model.pt"))
        assert Path(run_dir, "ray_train", name).is_dir()
    assert len(list(Path(run_dir, "sweeps", "r").glob("*/events.out.tfevents.*"))) == 2


def test_results_table_agrees_with_the_evaluation_stages(sweep_run):
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.fair_eval import evaluate_fair
    from wsss_ray.rundir import run_config
    from wsss_ray.stages.evaluate import evaluate_maps
    from wsss_ray.stages.results_table import results_table
    run_dir, _ = sweep_run
    run = RunDir(run_dir)
    table = results_table(run, ["lpcam", "cam"], resamples=200)
    rows = {r["method"]: r for r in table["rows"]}
    assert [r["method"] for r in table["rows"]] == ["cam", "lpcam"]       # the baseline first
    for method in rows:
        stage = evaluate_maps(run, method, "demo", run_config(run)["eval"], write=False)
        assert table["num_images"] == stage["num_images"]
        assert rows[method]["miou"] == pytest.approx(stage["best"]["miou"], abs=1e-12)
        assert rows[method]["threshold"] == stage["best"]["threshold"]
    # every image has maps of both methods, so the split is the fair stage's split
    assert rows["lpcam"]["fair_miou"] == pytest.approx(evaluate_fair(run, "lpcam")["report"]["miou"], abs=1e-12)
    d = rows["lpcam"]["vs_baseline"]
    assert d["difference"] == pytest.approx(rows["lpcam"]["miou"] - rows["cam"]["miou"], abs=1e-12)
    assert d["low"] <= d["high"] and d["resamples"] == 200
    assert "vs_baseline" not in rows["cam"]
    md = Path(run_dir, "eval", "results_table.md").read_text()
    assert md.count("\n| ") == 2 and "(baseline)" in md
    assert Path(run_dir, "eval", "results_table.png").stat().st_size > 0
