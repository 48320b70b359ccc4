"""Config loading: both spellings, overrides, one-line errors naming the key, YAML round trip."""
from __future__ import annotations

import pytest
import yaml

from labelless.config import RunConfig, TrainConfig, load_config, save_config, to_yaml
from labelless.errors import UserError

ONE_STAGE = {
    "dataset": "digits",
    "method": {"name": "simclr", "temperature": 0.2},
    "train": {"epochs": 200, "lr": 0.6, "optimizer": "lars"},
}
PIPELINE = {
    "name": "lsd",
    "dataset": {"name": "cifar10", "split": "train", "root": "/data"},
    "train": {"batch_size": 128},
    "stages": [
        {"name": "rotnet", "method": "rotnet", "train": {"epochs": 200, "schedule": "multistep",
                                                          "milestones": [60, 120, 160], "gamma": 0.2}},
        {"name": "cluster", "method": {"name": "lsd_c", "k": 10}, "train": {"epochs": 220}},
    ],
}


def test_one_stage_spelling_becomes_a_stage_named_after_its_method():
    config = load_config(ONE_STAGE)
    assert isinstance(config, RunConfig)
    (stage,) = config.stages
    assert stage.name == "simclr" and stage.method == {"name": "simclr", "temperature": 0.2}
    assert stage.train.epochs == 200 and stage.train.lr == 0.6 and stage.train.optimizer == "lars"
    assert stage.train.momentum == 0.9  # defaults fill the rest
    assert config.dataset.name == "digits" and config.k is None


def test_pipeline_merges_top_level_train_defaults_into_each_stage():
    config = load_config(PIPELINE)
    assert [s.name for s in config.stages] == ["rotnet", "cluster"]
    assert [s.train.batch_size for s in config.stages] == [128, 128]
    assert config.stages[0].train.milestones == [60, 120, 160] and config.stages[1].train.epochs == 220


def test_overrides_address_run_stage_and_every_stage():
    config = load_config(PIPELINE, ["seed=3", "train.lr=0.01", "stages.1.train.epochs=5",
                                    "stages.rotnet.method.width=2", "dataset.options.download=true", "k=null"])
    assert config.seed == 3 and config.k is None
    assert [s.train.lr for s in config.stages] == [0.01, 0.01]
    assert config.stages[1].train.epochs == 5 and config.stages[0].method["width"] == 2
    assert config.dataset.options == {"download": True}
    single = load_config(ONE_STAGE, ["method.temperature=0.5", "train.milestones=[120, 160]", "train.ema_decay=0.99"])
    assert single.stages[0].method["temperature"] == 0.5 and single.stages[0].train.milestones == [120, 160]
    assert single.stages[0].train.ema_decay == 0.99


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=0.1"], "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["sede=1"], "unknown config key 'sede' (did you mean 'seed'?)"),
    (["dataset.spilt=test"], "unknown config key 'dataset.spilt' (did you mean 'dataset.split'?)"),
    (["stages.1.train.epoch=5"], "unknown config key 'stages.1.train.epoch' (did you mean 'stages.1.train.epochs'?)"),
    (["stages.7.train.epochs=5"], "no stage '7'"),
    (["method.k=3"], "ambiguous"),
    (["train.lr"], "is not KEY=VALUE"),
    (["train.lr=fast"], "config key 'train.lr' must be a number, got 'fast'"),  # as typed, not a stage's copy
    (["stages.1.train.epochs=1.5"], "config key 'stages.1.train.epochs' must be an integer, got 1.5"),
    (["train.optimizer=sdg"], "must be one of sgd, adam, adamw, lars, got 'sdg' (did you mean 'sgd'?)"),
    (["seed.x=1"], "config key 'seed' is a value, not a section"),
])
def test_bad_overrides_fail_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(PIPELINE, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"train": {"lrr": 0.1}}, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ({"optimiser": "sgd"}, "unknown config key 'optimiser'"),
    ({"train": {"epochs": 0}}, "config key 'train.epochs' must be ≥ 1, got 0"),
    ({"train": {"nesterov": "yes"}}, "config key 'train.nesterov' must be true or false"),
    ({"train": {"schedule": "multistep"}}, "config key 'train.milestones' must be non-empty"),
    ({"train": {"milestones": [160, 120]}}, "config key 'train.milestones' must be increasing"),
    ({"train": {"min_steps": 0}}, "config key 'train.min_steps' must be ≥ 1 or null, got 0"),
    ({"train": {"min_steps": 900, "schedule": "multistep", "milestones": [60]}},
     "config key 'train.min_steps' must be null with schedule step or multistep (their drops are set in epochs), got 900"),
    ({"train": {"betas": [0.9]}}, "config key 'train.betas' must be a list of 2 values"),
    ({"device": "gpu"}, "config key 'device' must be one of auto, cpu, cuda"),
    ({"k": 1}, "config key 'k' must be ≥ 2"),
    ({"dataset": None}, "config has no dataset"),
    ({"method": None}, "must be a method name"),
])
def test_bad_yaml_values_fail_with_one_line_naming_the_key(change, message):
    with pytest.raises(UserError) as error:
        load_config({**ONE_STAGE, **change})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_structural_mistakes_are_user_errors(tmp_path):
    (tmp_path / "fake.yaml").write_text("dataset: digits\n")
    with pytest.raises(UserError, match=f"^config file {tmp_path / 'fake.yaml'}: config has no method"):
        load_config(tmp_path / "fake.yaml")
    with pytest.raises(UserError, match="not both"):
        load_config({**PIPELINE, "method": "x"})
    with pytest.raises(UserError, match="config has no method"):
        load_config({"dataset": "digits"})
    with pytest.raises(UserError, match="used twice"):
        load_config({"dataset": "digits", "stages": [{"method": "a"}, {"method": "a"}]})


def test_yaml_exponent_without_dot_is_read_as_a_number(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("dataset: digits\nmethod: iic\ntrain:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    config = load_config(path)
    assert config.stages[0].train.lr == 1e-3 and config.stages[0].train.weight_decay == 5e-4
    assert config.name == "exp"  # defaults to the file's stem


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {lr: 0.1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("source", [ONE_STAGE, PIPELINE])
def test_yaml_round_trip(tmp_path, source):
    config = load_config(source, ["train.betas=[0.8, 0.99]", "train.ema_decay=0.999", "notes=ablation A"])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(path) == config
    assert load_config(yaml.safe_load(to_yaml(config))) == config
    spelled = yaml.safe_load(path.read_text())
    assert ("method" in spelled) == (source is ONE_STAGE)  # one-stage runs keep the short spelling


def test_two_stage_uc_schedule_is_expressible():
    train = load_config(ONE_STAGE, ["train.schedule=step", "train.step_start=80", "train.step_size=40",
                                    "train.gamma=0.1"]).stages[0].train
    assert isinstance(train, TrainConfig) and (train.step_start, train.step_size) == (80, 40)


def test_a_record_names_one_stage_by_its_method_and_a_pipeline_by_its_stages_methods():
    """By method names, not stage names: PIPELINE's second stage is called 'cluster', its method lsd_c."""
    from labelless.config import method_label
    assert method_label(load_config(ONE_STAGE).stages) == "simclr"
    assert method_label(load_config(PIPELINE).stages) == "pipeline:rotnet+lsd_c"
