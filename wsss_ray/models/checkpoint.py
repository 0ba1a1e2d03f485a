"""Model artifacts: ``model.pt`` holds tensors only (loaded with weights_only=True) and
``model.json`` the typed config that rebuilds the network."""
from __future__ import annotations

import io
import json

import torch

from wsss_ray.config import ModelConfig, from_dict, to_dict
from wsss_ray.models.classifier import Classifier, build_classifier
from wsss_ray.store import open_fs


def save_classifier(model: Classifier, model_cfg: ModelConfig, num_classes: int, directory: str,
                    extra: dict | None = None) -> None:
    fs, path = open_fs(directory)
    fs.create_dir(path, recursive=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    meta = {"model": to_dict(model_cfg), "num_classes": num_classes, **(extra or {})}
    for name, data in (("model.json", json.dumps(meta, indent=1).encode()), ("model.pt", buf.getvalue())):
        with fs.open_output_stream(f"{path}/_{name}") as out:     # tmp then rename: atomic
            out.write(data)
    fs.move(f"{path}/_model.json", f"{path}/model.json")
    fs.move(f"{path}/_model.pt", f"{path}/model.pt")          # model.pt last: it marks completion


def load_state(directory: str, name: str = "model.pt") -> dict:
    fs, path = open_fs(directory)
    with fs.open_input_stream(f"{path}/{name}") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def load_classifier(directory: str) -> tuple[Classifier, ModelConfig, dict]:
    fs, path = open_fs(directory)
    with fs.open_input_stream(f"{path}/model.json") as f:
        meta = json.loads(f.read().decode())
    model_cfg = from_dict(ModelConfig, meta["model"])
    # weights="none": the state dict below carries every trained tensor
    model = build_classifier(model_cfg.backbone, "none", meta["num_classes"], model_cfg.freeze_backbone,
                             model_cfg.input_norm)
    model.load_state_dict(load_state(directory))
    return model.eval(), model_cfg, meta
