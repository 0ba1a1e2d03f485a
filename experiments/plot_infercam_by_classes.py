"""Bar chart of best-threshold seed mIoU per InferCam variant, on all images and on the images
with one, two and three or more GT classes, from ``infercam_unite.py --by-classes`` results:

    PYTHONPATH=. .venv/bin/python experiments/plot_infercam_by_classes.py \\
        experiments/results/infercam_unite_coco_diag.json experiments/results/infercam_unite_coco_levers.json \\
        --variants cam,infercam_split_pp,infercam_split_b40,infercam_split_b112 --out docs/figures/x.png

A variant found in several files is taken from the first. Each subset has its own best threshold.
"""
from __future__ import annotations

import argparse
import json


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="infercam_unite_<tag>.json files made with --by-classes")
    p.add_argument("--variants", required=True, help="comma-separated map names, in plot order")
    p.add_argument("--labels", default="", help="comma-separated legend labels (default: the names)")
    p.add_argument("--title", default="seed mIoU (best threshold) by GT classes per image")
    p.add_argument("--out", required=True, help="PNG path")
    return p.parse_args()


def load_scores(paths) -> dict:
    """{variant: {"all": miou, "1": miou, "2": miou, "3+": miou}, plus "images": {subset: count}}."""
    scores, images = {}, {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for name, row in data["results"].items():
            if name in scores:
                continue
            if "by_classes" not in row:
                raise SystemExit(f"{path}: {name} has no by_classes scores (run infercam_unite.py --by-classes)")
            counts = {k: v["images"] for k, v in row["by_classes"].items()}
            if images and counts != images:
                raise SystemExit(f"{path}: {name} is scored on {counts} images, others on {images}: not one run")
            scores[name] = {"all": row["miou"], **{k: v["miou"] for k, v in row["by_classes"].items()}}
            images = counts
    return {"scores": scores, "images": images}


def plot(scores: dict, images: dict, variants: list, labels: list, title: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    subsets = ["all", *images]
    names = [f"all ({sum(images.values())})", *(f"{k} class{'es' if k != '1' else ''} ({n})" for k, n in images.items())]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    for v, (variant, label) in enumerate(zip(variants, labels)):
        xs = [i + (v - (len(variants) - 1) / 2) * width for i in range(len(subsets))]
        ax.bar(xs, [scores[variant][s] for s in subsets], width, label=label)
    ax.set_xticks(range(len(subsets)), names)
    ax.set_ylabel("mIoU")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")   # outside: bars stay visible
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    loaded = load_scores(args.results)
    variants = [v for v in args.variants.split(",") if v]
    missing = [v for v in variants if v not in loaded["scores"]]
    if missing:
        raise SystemExit(f"not in the results: {missing}; found {sorted(loaded['scores'])}")
    labels = [x for x in args.labels.split(",") if x] or variants
    if len(labels) != len(variants):
        raise SystemExit("--labels needs one label per variant")
    plot(loaded["scores"], loaded["images"], variants, labels, args.title, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
