"""Epoch directories: what a rerun of a killed training job resumes from."""
from __future__ import annotations

import torch

from wsss_ray.models.checkpoint import keep_epoch, latest_epoch, prune_epochs, restore_epoch


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()                         # optimizer state is not empty
    return model, optimizer


def test_keep_epoch_keeps_the_last_two_and_restore_resumes_after_the_last(tmp_path):
    epochs = str(tmp_path / "epochs")
    assert latest_epoch(epochs) == ""
    for epoch in range(4):
        model, optimizer = _model_and_optimizer(epoch)
        keep_epoch(epochs, model, optimizer, epoch, {"loss": float(epoch)})
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch-002", "epoch-003"]
    assert latest_epoch(epochs) == f"{epochs}/epoch-003"
    fresh, fresh_opt = _model_and_optimizer(99)
    assert restore_epoch(latest_epoch(epochs), fresh, fresh_opt) == 4
    saved, saved_opt = _model_and_optimizer(3)
    assert torch.equal(fresh.weight, saved.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], saved_opt.state_dict()["state"][0]["exp_avg"])


def test_an_epoch_without_state_json_is_incomplete_and_never_pruned_away_alone(tmp_path):
    epochs = tmp_path / "epochs"
    model, optimizer = _model_and_optimizer(0)
    keep_epoch(str(epochs), model, optimizer, 0, {})
    (epochs / "epoch-001").mkdir()
    (epochs / "epoch-001" / "model.pt").write_bytes(b"half")    # killed before state.json
    assert latest_epoch(str(epochs)) == f"{epochs}/epoch-000"
    assert prune_epochs(str(epochs), keep=1) == []                  # the only complete epoch stays
    keep_epoch(str(epochs), model, optimizer, 1, {}, keep=0)        # 0 keeps every epoch
    keep_epoch(str(epochs), model, optimizer, 2, {}, keep=0)
    assert sorted(p.name for p in epochs.iterdir()) == ["epoch-000", "epoch-001", "epoch-002"]


def test_state_dir_is_tensors_only_and_an_interrupted_write_leaves_no_model_pt(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from wsss_ray.models.checkpoint import load_state, save_state_dir
    model, _ = _model_and_optimizer(0)
    done = tmp_path / "done"
    save_state_dir(model.state_dict(), {"kind": "test"}, str(done))
    assert sorted(p.name for p in done.iterdir()) == ["model.json", "model.pt"]     # no temporaries left
    loaded = load_state(str(done))                                                  # weights_only=True inside
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

    class KilledBeforeRename:
        """The local filesystem, killed between writing a temporary file and renaming it."""
        def __init__(self):
            self.fs = pafs.LocalFileSystem()

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def move(self, src, dest):
            raise OSError("killed mid-rename")
    monkeypatch.setattr("wsss_ray.models.checkpoint.open_fs", lambda d: (KilledBeforeRename(), d))
    broken = tmp_path / "broken"
    try:
        save_state_dir(model.state_dict(), {}, str(broken))
    except OSError:
        pass
    # what a crash leaves is named '_...' (readers skip it) and never the completion mark model.pt
    assert not (broken / "model.pt").exists() and not (broken / "model.json").exists()
    assert all(p.name.startswith("_") for p in broken.iterdir())
