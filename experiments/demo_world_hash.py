"""One SHA-256 over every image and mask of the demo world, and over the training resize of
its first images: run it under two Pillow or numpy versions to see whether the data differs
(docs/RESULTS.md, "The figures depend on the kind of CPU").

    PYTHONPATH=. .venv/bin/python experiments/demo_world_hash.py
    .venv/bin/python -m pip install --target DIR pillow==12.3.0     # DIR: any empty directory
    PYTHONPATH=DIR:. .venv/bin/python experiments/demo_world_hash.py
"""
from __future__ import annotations

import argparse
import hashlib

import numpy as np
import PIL

from wsss_ray.data.augment import resize_long_side
from wsss_ray.data.demo import render_demo_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--resized", type=int, default=50, help="first N images also resized as training does")
    args = p.parse_args()
    world, resized = hashlib.sha256(), hashlib.sha256()
    for index in range(args.images):
        image, mask, _ = render_demo_image(0, index)
        world.update(image.tobytes())
        world.update(mask.tobytes())
        if index < args.resized:
            for side in (80, 100, 130, 160):
                resized.update(resize_long_side(image, side).tobytes())
    print(f"pillow {PIL.__version__}, numpy {np.__version__}: world {world.hexdigest()[:16]}, "
          f"training resize {resized.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
