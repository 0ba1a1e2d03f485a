"""The quick demo's CAM route on a real multi-node Ray cluster on this machine: a head and two
worker nodes, each its own raylet (``ray.cluster_utils.Cluster``). Run by tests/test_multinode.py
in its own process (the suite's other tests share one single-node session):

    python tests/multinode_flow.py OUT_DIR

1. the flow with training workers placed SPREAD and two extraction actors;
2. the CAM pass again while a worker node is removed after the first shard;
3. a replacement node joins (as an autoscaler would bring one), then the classifier is trained
   again while the node of one training rank is removed after its first epoch.
Writes OUT_DIR/report.json for the test to check; always shuts the cluster down."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKER_CPUS = 2


def when(condition, then, timeout: float = 600.0) -> threading.Thread:
    """Run ``then()`` on a thread once ``condition()`` holds."""
    def wait():
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        then()
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def rank_nodes(run_dir: Path, name: str) -> dict[int, str]:
    records = [json.loads(Path(p).read_text()) for p in glob.glob(str(run_dir / "progress" / f"{name}.rank*.json"))]
    return {r["rank"]: r["node_id"] for r in records}


def main(out_dir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    out = Path(out_dir)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=WORKER_CPUS) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        report = {"nodes_at_start": len(ray.nodes())}
        report.update(run_checks(cluster, workers, out / "run"))
        (out / "report.json").write_text(json.dumps(report, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_checks(cluster, workers, run_dir: Path) -> dict:
    from wsss_ray.models.checkpoint import load_classifier
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.extract import extract_maps
    from wsss_ray.stages.pipeline import demo_config, run_pipeline
    from wsss_ray.stages.train import train_classifier

    cfg = demo_config(str(run_dir), quick=True, methods=("cam",))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, placement="SPREAD", num_workers=2),
                              cam=dataclasses.replace(cfg.cam, num_actors=2, actor_cpus=1.0))
    summary = run_pipeline(cfg)
    report = {"miou": summary["results"]["cam"]["miou"], "train_nodes": len(set(rank_nodes(run_dir, "cam").values()))}
    run, ckpt = RunDir(str(run_dir)), str(run_dir / "checkpoints" / "cam")

    # 2. a worker node lost during extraction
    lost = run_dir / "maps" / "cam_node_lost"
    def kill_extraction_node():
        cluster.remove_node(workers[0], allow_graceful=False)
        report["extraction_node_removed_after_shards"] = len(list(lost.glob("part-*.parquet")))
    killer = when(lambda: any(lost.glob("part-*.parquet")), kill_extraction_node)
    extracted = extract_maps(run, "cam_node_lost", "cam", ckpt, cfg.cam)
    killer.join(60)
    report.update(extraction_nodes=extracted["nodes"], extraction_images=extracted["images"])
    report["shards_equal"] = ({p.name: p.read_bytes() for p in sorted(lost.glob("part-*.parquet"))} ==
                              {p.name: p.read_bytes() for p in sorted((run_dir / "maps" / "cam").glob("part-*.parquet"))})

    # 3. a replacement joins (as an autoscaler would bring one; a node starts from the main thread
    # only), then the node of a training rank is lost after the first epoch
    cluster.add_node(num_cpus=WORKER_CPUS)
    cluster.wait_for_nodes()
    progress = run_dir / "progress" / "cam_node_lost.json"
    def kill_training_node():
        ranks = rank_nodes(run_dir, "cam_node_lost")
        live = {w.node_id: w for w in cluster.worker_nodes}
        victim = next((live[n] for n in ranks.values() if n in live), None)
        report["training_rank_nodes_before_loss"] = len(set(ranks.values()))
        if victim is not None:
            cluster.remove_node(victim, allow_graceful=False)
            report["training_node_removed"] = True
    killer = when(progress.exists, kill_training_node)
    trained = train_classifier(run, "cam_node_lost", cfg.model, cfg.train)
    killer.join(60)
    a, _, _ = load_classifier(ckpt)
    b, _, _ = load_classifier(str(run_dir / "checkpoints" / "cam_node_lost"))
    report["training_steps"] = trained.get("steps_done")
    report["weights_equal"] = all(bool((x == y).all()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    import ray
    report["nodes_at_end"] = len([n for n in ray.nodes() if n["Alive"]])
    return report


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main(sys.argv[1])
