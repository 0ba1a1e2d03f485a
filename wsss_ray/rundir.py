"""The run directory: every stage reads and writes under one root (local path or URI).

Every location it hands out is a URI string (a plain absolute path for local runs), never a
filesystem-internal path: an S3 key without its scheme would be read as a local file."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from wsss_ray.store import join_uri, open_fs, uri_exists, write_bytes_atomic


class StaleRunError(ValueError):
    """A run directory holding outputs made with other options: a mix would be silently wrong,
    so the job stops (the command line prints it in one line, exit code 2)."""


@dataclass(frozen=True)
class RunDir:
    root: str

    def __post_init__(self):
        # Ray workers do not share the driver's working directory: make local roots absolute
        if "://" not in self.root:
            object.__setattr__(self, "root", os.path.abspath(self.root))

    def uri(self, *parts: str) -> str:
        """A location under the run: a local path or a URI (scheme and query kept), fit to
        hand to any process; ``store.open_fs`` turns it into (filesystem, path)."""
        return join_uri(self.root, *parts)

    def ray_storage(self, *parts: str) -> dict:
        """``storage_path`` (and ``storage_filesystem``) for Ray Train/Tune's RunConfig: a
        URI's filesystem goes whole, so its query options (endpoint, scheme) reach Ray too."""
        uri = self.uri(*parts)
        if "://" not in uri:
            return {"storage_path": uri}
        fs, path = open_fs(uri)
        return {"storage_path": path, "storage_filesystem": fs}

    def manifest(self) -> str:
        return self.uri("manifest")

    def checkpoint(self, name: str) -> str:
        return self.uri("checkpoints", name)

    def maps(self, method: str) -> str:
        return self.uri("maps", method)

    def errors(self, stage: str) -> str:
        return self.uri("errors", stage)

    def eval_json(self, method: str) -> str:
        return self.uri("eval", f"{method}.json")

    def exists(self, uri: str) -> bool:
        return uri_exists(uri)

    def write_text(self, uri: str, text: str) -> None:
        fs, path = open_fs(uri)
        write_bytes_atomic(fs, path, text.encode())

    def read_text(self, uri: str) -> str:
        fs, path = open_fs(uri)
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_json(self, uri: str, data) -> None:
        self.write_text(uri, json.dumps(data, indent=1, sort_keys=True))

    def read_json(self, uri: str):
        return json.loads(self.read_text(uri))


# ----------------------------------------------------------------------------- what a finished run holds

def run_config(run: RunDir) -> dict:
    """The pipeline config the run was made with (``config.json``), as typed configs."""
    from wsss_ray.config import CamConfig, EvalConfig, LPCAMConfig, ModelConfig, TrainConfig, from_dict
    raw = run.read_json(run.uri("config.json"))
    subset = raw["dataset"].get("class_subset")
    dataset = raw["dataset"]["kind"] + (f":{subset}" if subset else "")      # as the pipeline names it
    return {"cam": from_dict(CamConfig, raw["cam"]), "lpcam": from_dict(LPCAMConfig, raw["lpcam"]),
            "eval": from_dict(EvalConfig, raw["eval"]), "model": from_dict(ModelConfig, raw["model"]),
            "recam_train": from_dict(TrainConfig, raw["recam_train"]), "dataset": dataset,
            "recam_unfreeze": bool(raw.get("recam_unfreeze", False))}


def evaluable_images(run: RunDir) -> tuple[list[int], list[list[int]], dict[int, str]]:
    """Labelled images with a GT mask: (ids, label sets, id -> mask uri)."""
    from wsss_ray.data.manifest import read_manifest
    manifest, _ = read_manifest(run.manifest())
    ids, labels, masks = [], [], {}
    for r in manifest.select(["image_id", "labels", "mask_uri"]).to_pylist():
        if r["labels"] and r["mask_uri"]:
            ids.append(int(r["image_id"]))
            labels.append(list(r["labels"]))
            masks[int(r["image_id"])] = r["mask_uri"]
    return ids, labels, masks
