"""TrainConfig on the shared RunConfig base: train's defaults, flat quantizer keys, legacy keys,
one-line errors and a config.yaml that loads back to the same config."""

from pathlib import Path

import pytest
import yaml

from bitswitch.errors import BitswitchError
from bitswitch.jobs import RunConfig
from bitswitch.profiles import QuantOptions
from bitswitch.train.config import TrainConfig

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_train_config_is_a_run_config_with_train_defaults():
    cfg = TrainConfig()
    assert isinstance(cfg, RunConfig)
    assert (cfg.model, cfg.data, cfg.out, cfg.batch_size) == ("smollm2-135m", "squad", "runs/train", 8)
    assert (cfg.order, cfg.sample_seed, cfg.offset, cfg.schedule_order) == ("stratified", 0, 0, "ascending")
    assert cfg.options == QuantOptions()


def test_options_follow_the_flat_quantizer_keys_and_are_no_key_of_their_own():
    cfg = TrainConfig.load(None, ["group_size=32", "weight_symmetric=false"])
    assert cfg.options == QuantOptions(weight_symmetric=False, group_size=32)
    assert "options" not in cfg.to_dict() and "options" not in TrainConfig.keys()
    with pytest.raises(BitswitchError, match="unknown config key.*options.*allowed keys are"):
        TrainConfig.load(None, {"options": {"group_size": 32}})
    with pytest.raises(TypeError):
        TrainConfig(options=QuantOptions())


def test_saved_config_loads_back_equal(tmp_path):
    cfg = TrainConfig.load(None, ["order=file", "sample_seed=4", "offset=10", "group_size=64", "lr=0.001",
                                  "schedule=progressive", "schedule_order=descending", "profiles=fp,w4a8"])
    cfg.save(tmp_path / "config.yaml")
    again = TrainConfig.load(str(tmp_path / "config.yaml"))
    assert again == cfg and again.settings_hash() == cfg.settings_hash()


def test_legacy_order_key_is_the_schedule_order():
    cfg = TrainConfig.load(None, ["schedule=progressive", "order=descending"])
    assert (cfg.schedule_order, cfg.order) == ("descending", "stratified")
    with pytest.raises(BitswitchError, match="schedule_order"):
        TrainConfig.load(None, {"order": "ascending", "schedule_order": "descending"})


@pytest.mark.parametrize("name", ["accuracy", "cpt", "objectives", "robustness", "sensitivity_search"])
def test_experiment_train_settings_still_load(name):
    """Every ``set:`` mapping of a train step in experiments/*.yaml is made of valid keys."""
    doc = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("set"), dict):
                found.append({k: v for k, v in node["set"].items() if not (isinstance(v, str) and "${" in v)})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    for keys in found:
        TrainConfig.load(None, keys)


@pytest.mark.parametrize("overrides, needle", [
    ({"stepz": 1}, "unknown config key(s) stepz: allowed keys are"),
    ({"lr": "fast"}, "lr='fast' has the wrong type: expected float"),
    ({"order": "random"}, "--order 'random'"),
    ({"sample_seed": 1.5}, "sample_seed=1.5 has the wrong type"),
    ({"adapters": "runs/a/adapters"}, "train creates new adapters"),
    ({"dtype": "fp16"}, "dtype='fp16' is not allowed"),
    ({"task": "text", "order": "file"}, "drop them for task text"),
    ({"group_size": 0}, "group_size must be a positive"),
])
def test_bad_values_are_one_line_errors(overrides, needle):
    with pytest.raises(BitswitchError) as exc:
        TrainConfig.load(None, overrides)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_operational_keys_are_not_hashed():
    a, b = TrainConfig(), TrainConfig(save_every=7, log_every=3, device="cpu", out="elsewhere", max_memory="1GiB",
                                      check_memory=False, checkpointing=True)
    assert a.settings_hash() == b.settings_hash() != TrainConfig(lr=1e-3).settings_hash()
