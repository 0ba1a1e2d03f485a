"""Configs as YAML files (configs/, wsss_ray/config_file.py) and the command line's front door:
presets as shipped files, dotted overrides, ``config show`` round trips, exit code 2 on a bad key,
type or value, a rerun with another config refused, early errors a user can act on."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from wsss_ray import cli
from wsss_ray.config import PipelineConfig, to_dict
from wsss_ray.config_file import ConfigError, changed_keys, load_config, preset_names, to_yaml
from wsss_ray.rundir import RunDir
from wsss_ray.stages.pipeline import check_inputs, coco_config, demo_config, record_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_shipped_preset_loads_and_the_set_covers_each_dataset_and_paper():
    names = preset_names()
    for wanted in ("demo", "quick", "demo_effnet", "coco_reference", "coco_lpcam", "coco_recam",
                   "voc_lpcam", "voc_recam", "voc_infercam", "folder"):
        assert wanted in names
    kinds = {load_config(n).dataset.kind for n in names}
    assert kinds == {"demo", "coco", "voc", "folder"}
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == names


def test_the_legacy_flags_choose_a_shipped_preset_and_apply_their_values():
    quick_effnet = demo_config("r", quick=True, methods=("cam", "recam"), backbone="efficientnet_lite0")
    assert changed_keys(to_dict(load_config("demo_effnet")), to_dict(quick_effnet)) == [
        "dataset.demo_size", "methods", "recam_train.epochs", "run_dir"]
    assert (quick_effnet.train.epochs, quick_effnet.recam_train.epochs, quick_effnet.dataset.demo_size) == (30, 3, "quick")
    assert demo_config("runs/quick", quick=True) == load_config("quick")
    ref = coco_config("r", "/data/coco", "train+val", "voc20", limit=50, protocol="reference", methods=("cam",))
    assert changed_keys(to_dict(load_config("coco_reference", ("dataset.root=/data/coco",))), to_dict(ref)) == [
        "dataset.limit", "methods", "run_dir"]
    plain = coco_config("r", "/data/coco", split="val2014")
    assert (plain.model.backbone, plain.dataset.split, plain.dataset.class_subset, plain.lpcam.k) == ("resnet50", "val2014", "", 20)


def test_paper_settings_in_the_dataset_presets():
    voc, coco = load_config("voc_lpcam"), load_config("coco_lpcam")
    assert (voc.lpcam.tau, voc.lpcam.k, voc.lpcam.mu_b_low, voc.lpcam.mu_b_high) == (0.1, 12, 0.05, 0.9)
    assert (coco.lpcam.tau, coco.lpcam.k, coco.lpcam.images_per_class, coco.lpcam.mu_b_high) == (0.25, 20, 100, 0.5)
    assert load_config("voc_recam").recam_train.recam_lambda == 1.0
    assert (load_config("coco_recam").recam_train.recam_lambda, load_config("coco_recam").recam_train.batch_size) == (0.1, 6)
    assert load_config("folder").dataset == dataclasses.replace(load_config("folder").dataset, split="train", class_subset="")


@pytest.mark.parametrize("name", preset_names())
def test_config_show_round_trips(name, tmp_path, capsys):
    assert cli.main(["config", "show", name, "-o", "lpcam.tau=0.3", "-o", "cam.scales=[1.0,0.5]"]) == 0
    text = capsys.readouterr().out
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    cfg = load_config(str(shown))
    assert cfg == load_config(name, ("lpcam.tau=0.3", "cam.scales=[1.0,0.5]"))
    assert (cfg.lpcam.tau, cfg.cam.scales) == (0.3, (1.0, 0.5))
    assert to_yaml(cfg) == text


def test_overrides_are_typed_by_the_field_they_set():
    cfg = load_config("quick", ("methods=cam,recam", "train.epochs=2", "lpcam.fg_only=true", "cam.scales=[1, 2]",
                                "eval.thresholds=[0.2, 0.4]", "recam_weight=w'"))
    assert cfg.methods == ("cam", "recam") and cfg.train.epochs == 2 and cfg.lpcam.fg_only is True
    assert cfg.cam.scales == (1.0, 2.0) and cfg.eval.thresholds == (0.2, 0.4) and cfg.recam_weight == "w'"
    assert load_config("quick", ("lpcam.tau=1",)).lpcam.tau == 1          # an int where a float goes


@pytest.mark.parametrize("override,says", [
    ("lpcam.taux=0.2", "unknown key 'lpcam.taux'; valid keys of lpcam: fallback, fg_only"),
    ("lpcams.tau=0.2", "unknown key 'lpcams'; valid keys: advcam, cam, dataset"),
    ("lpcam.k=many", "lpcam.k='many': expected int, got str"),
    ("train.epochs=true", "train.epochs=True: expected int, got bool"),
    ("lpcam=3", "lpcam is a section"),
    ("lpcam.tau=-1", "lpcam.tau -1: > 0"),
    ("lpcam.mu_b_low=0.95", "mu_b_low <= mu_b_high"),
    ("cam.resample=bicubic", "resample must be 'pil'"),
    ("methods=cam,lpcamm", "methods \\['lpcamm'\\]: choose from cam, lpcam"),
    ("eval.thresholds=[1.5]", "each in \\[0, 1\\]"),
    ("dataset.kind=imagenet", "dataset.kind 'imagenet'"),
    ("train.optimizer=rmsprop", "train.optimizer 'rmsprop'"),
    ("tau", "is not KEY=VALUE"),
])
def test_a_bad_key_type_or_value_exits_2_naming_it(override, says, capsys):
    with pytest.raises(ConfigError, match=says):
        load_config("quick", (override,))
    assert cli.main(["config", "show", "quick", "-o", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsss-ray: error: ") and len(err.strip().splitlines()) == 1


def test_base_chain_and_its_errors(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: quick\nlpcam: {k: 5}\n")
    (tmp_path / "child.yaml").write_text("base: mine.yaml\ntrain: {epochs: 1}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.lpcam.k, cfg.train.epochs, cfg.dataset.demo_size, cfg.lpcam.tau) == (5, 1, "quick", 0.1)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a mapping of sections"):
        load_config(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("lpcam: {k: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))


def _args(argv):
    parser = cli.argparse.ArgumentParser()
    cli.add_pipeline_args(parser, "cam,lpcam,lpcam_f")
    return cli.config_from_args(parser.parse_args(argv), parser)


def test_command_line_takes_a_config_with_operational_flags_and_overrides():
    cfg = _args(["--config", "quick", "--run-dir", "/tmp/x", "--num-actors", "3", "--strict", "-o", "lpcam.k=4"])
    assert (cfg.run_dir, cfg.cam.num_actors, cfg.strict, cfg.lpcam.k) == ("/tmp/x", 3, True, 4)
    assert load_config("quick").run_dir == "runs/quick" == _args(["--config", "quick"]).run_dir
    # the flags' presets take overrides too, and a config file refuses the preset flags
    assert _args(["--quick", "-o", "lpcam.tau=0.2"]) == dataclasses.replace(
        demo_config("runs/demo", quick=True), lpcam=dataclasses.replace(demo_config("x").lpcam, tau=0.2))
    with pytest.raises(ConfigError, match="--coco-root, --lpcam: with a config file, set these with -o"):
        _args(["--config", "quick", "--coco-root", "/data", "--lpcam", "k=3"])


def test_rerun_with_another_config_names_what_differs(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = demo_config(run_dir, quick=True)
    run = RunDir(run_dir)
    record_config(run, cfg)
    assert load_config(str(tmp_path / "run" / "config.yaml")) == cfg
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == json.loads(json.dumps(to_dict(cfg)))
    # what runs and where may change; what a stage computes may not
    record_config(run, dataclasses.replace(cfg, methods=("cam", "recam"), cam=dataclasses.replace(cfg.cam, num_actors=4)))
    changed = dataclasses.replace(cfg, lpcam=dataclasses.replace(cfg.lpcam, tau=0.3),
                                  train=dataclasses.replace(cfg.train, epochs=9))
    with pytest.raises(ConfigError, match="made with another config: lpcam.tau, train.epochs differ"):
        record_config(run, changed)
    record_config(run, changed, allow_change=True)
    assert load_config(str(tmp_path / "run" / "config.yaml")).lpcam.tau == 0.3


def test_inputs_a_user_can_fix_stop_early_with_one_line(tmp_path, capsys, monkeypatch):
    for overrides, says in [((), "dataset.root is empty: give the coco dataset's root with -o dataset.root=PATH"),
                            (("dataset.root=/no/such/tree",), "dataset.root '/no/such/tree' does not exist")]:
        with pytest.raises(ConfigError, match=says):
            check_inputs(load_config("coco_lpcam", overrides))
    with pytest.raises(ConfigError, match="dataset.tags_file is empty"):
        check_inputs(load_config("folder", (f"dataset.root={tmp_path}",)))
    check_inputs(load_config("quick"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))      # no resnet50-*.pth on this machine
    with pytest.raises(ConfigError, match=r"^model.weights=imagenet: resnet50 ImageNet weights are not available "
                                          r"offline.*Give a local state_dict file with -o model.weights=/path/to/"
                                          r"resnet50.pth") as e:
        check_inputs(load_config("coco_lpcam", (f"dataset.root={tmp_path}",)))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.weights=/no/file.pth: weights='/no/file.pth' is neither"):
        check_inputs(load_config("quick", ("model.weights=/no/file.pth",)))
    not_a_dir = tmp_path / "a_file"          # a path under a file: unwritable also for root
    not_a_dir.write_text("")
    assert cli.main(["run", "quick", "--run-dir", str(not_a_dir / "run")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_config_is_plain_data():
    """Every section is a frozen dataclass of plain values: YAML in, YAML out, nothing pickled."""
    cfg = load_config("coco_reference", ("dataset.root=/data",))
    assert yaml.safe_load(to_yaml(cfg))["lpcam"]["k"] == 12
    assert isinstance(cfg, PipelineConfig) and dataclasses.is_dataclass(cfg.lpcam)


def test_sweep_spaces_are_dotted_keys_checked_like_overrides():
    from wsss_ray.config_file import parse_space
    assert parse_space(("lpcam.tau=[0.1,0.25]", "lpcam.mu_f=0.5..0.97", "lpcam.k=[8, 12]")) == \
        ("lpcam", {"tau": [0.1, 0.25], "mu_f": (0.5, 0.97), "k": [8, 12]})
    assert parse_space(("recam_train.lr_fc2=[1e-3, 5e-4]",)) == ("recam_train", {"lr_fc2": [0.001, 0.0005]})
    for bad, says in [(("lpcam.tau=[x]",), "lpcam.tau='x': expected float"),
                      (("cam.scales=[1]",), "'cam.scales' cannot be swept; sweepable keys: lpcam.tau"),
                      (("lpcam.tau=[0.1]", "recam_train.lr_fc2=[0.001]"), "one sweep varies one stage"),
                      (("lpcam.k=5..3",), "a range needs lo < hi"), (("lpcam.tau=[-1]",), "lpcam.tau -1: > 0"),
                      ((), "a sweep needs a space")]:
        with pytest.raises(ConfigError, match=says):
            parse_space(bad)


def test_sweep_space_from_a_file_and_grid_needs_lists(tmp_path, capsys, monkeypatch):
    from wsss_ray.config_file import parse_space
    from wsss_ray.stages import sweep

    def ray_must_not_start(*_):
        raise AssertionError("a usage error reached start_ray")
    monkeypatch.setattr(sweep, "start_ray", ray_must_not_start)     # usage errors stop before Ray starts
    space = tmp_path / "space.yaml"
    space.write_text("lpcam.tau: [0.1, 0.2]\nlpcam.mu_f: 0.6..0.9\n")
    assert parse_space((), str(space)) == ("lpcam", {"tau": [0.1, 0.2], "mu_f": (0.6, 0.9)})
    assert cli.main(["sweep", "--run-dir", str(tmp_path), "--space-file", str(space)]) == 2
    assert "a grid search takes lists of values" in capsys.readouterr().err
    assert cli.main(["sweep", "--run-dir", str(tmp_path), "-s", "recam_train.recam_lambda=[0.1]",
                     "--search", "optuna"]) == 2
    assert "optuna is for LPCAM sweeps" in capsys.readouterr().err
