"""Model artifacts: ``model.pt`` holds tensors only (loaded with weights_only=True) and
``model.json`` the typed config that rebuilds the network."""
from __future__ import annotations

import io
import json

import torch

from wsss_ray.config import ModelConfig, from_dict, to_dict
from wsss_ray.models.classifier import Classifier, build_classifier
from wsss_ray.store import exists, join_uri, open_fs, write_bytes_atomic


def save_classifier(model: Classifier, model_cfg: ModelConfig, num_classes: int, directory: str,
                    extra: dict | None = None) -> None:
    meta = {"model": to_dict(model_cfg), "num_classes": num_classes, **(extra or {})}
    save_state_dir(model.state_dict(), meta, directory)


def save_state_dir(state: dict, meta: dict, directory: str) -> None:
    """``model.json`` then ``model.pt`` (tensors only, loadable with weights_only=True), each
    written atomically; model.pt comes last because its presence marks the directory complete."""
    fs, path = open_fs(directory)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    write_bytes_atomic(fs, f"{path}/model.json", json.dumps(meta, indent=1).encode())
    write_bytes_atomic(fs, f"{path}/model.pt", buf.getvalue())


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


# ------------------------------------------------------------------ training epochs
# A trainer keeps one directory per finished epoch (local path or URI), so a rerun of a
# killed job resumes from the last one; state.json is written last and marks it complete.

def save_epoch(directory: str, model, optimizer, epoch: int, metrics: dict) -> None:
    fs, path = open_fs(directory)
    fs.create_dir(path, recursive=True)
    core = model.module if hasattr(model, "module") else model
    for name, state in (("model.pt", core.state_dict()), ("optim.pt", optimizer.state_dict())):
        buf = io.BytesIO()
        torch.save(state, buf)
        write_bytes_atomic(fs, f"{path}/{name}", buf.getvalue())
    write_bytes_atomic(fs, f"{path}/state.json", json.dumps({"epoch": epoch, **metrics}).encode())


def keep_epoch(epochs_dir: str, model, optimizer, epoch: int, metrics: dict, keep: int = 2) -> None:
    """Write ``epochs_dir/epoch-NNN``, then drop the epochs older than the last ``keep``."""
    save_epoch(join_uri(epochs_dir, f"epoch-{epoch:03d}"), model, optimizer, epoch, metrics)
    prune_epochs(epochs_dir, keep)


def restore_epoch(directory: str, model, optimizer) -> int:
    """Load an epoch directory into model and optimizer; returns the epoch to run next."""
    model.load_state_dict(load_state(directory, "model.pt"))
    optimizer.load_state_dict(load_state(directory, "optim.pt"))
    fs, path = open_fs(directory)
    with fs.open_input_stream(f"{path}/state.json") as f:
        return int(json.loads(f.read().decode())["epoch"]) + 1


def latest_epoch(epochs_dir: str) -> str:
    """The last complete ``epoch-NNN`` under ``epochs_dir`` as a URI, or "" when none."""
    fs, path = open_fs(epochs_dir)
    _, done = _epoch_names(fs, path)
    return join_uri(epochs_dir, done[-1]) if done else ""


def prune_epochs(epochs_dir: str, keep: int = 2) -> list[str]:
    """Delete the epoch directories older than the last ``keep`` complete ones (30 epochs of
    a ResNet-50 with its optimizer state would be ~9 GB); returns the deleted names. The
    epoch a rerun resumes from always stays; ``keep`` <= 0 keeps everything."""
    fs, path = open_fs(epochs_dir)
    names, done = _epoch_names(fs, path)
    if keep <= 0 or len(done) <= keep:
        return []
    stale = [n for n in names if n < done[-keep]]
    for name in stale:
        fs.delete_dir(f"{path}/{name}")
    return stale


def _epoch_names(fs, path: str) -> tuple[list[str], list[str]]:
    """All ``epoch-NNN`` directories, and those complete (with state.json), sorted."""
    import pyarrow.fs as pafs
    if not exists(fs, path):
        return [], []
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch-"))
    return names, [n for n in names if exists(fs, f"{path}/{n}/state.json")]
