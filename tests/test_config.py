import pytest

from raydistill.config import (ConfigError, CurriculumConfig, DataConfig, DistillConfig, Experiment, OptimizerConfig,
                               OutputConfig, RayConfig, StudentConfig, TeachersConfig, TrackingConfig, WandbConfig,
                               shipped_experiments)


def test_defaults_validate():
    exp = Experiment()
    assert exp.validate() is exp
    # what the defaults mean: 3 groups, one grade per group ending at resnet8's 3 blocks, 30 epochs
    assert (exp.num_groups(), exp.splits(), exp.head_widths(), exp.order(), exp.total_epochs()) == \
        (3, [1, 2, 3], [64, 64], [0, 1, 2], 30)
    assert exp.sync_batchnorm() is False and exp.with_overrides(["ray.workers=2"]).sync_batchnorm() is True


def test_shipped_experiments_load_and_validate():
    names = shipped_experiments()
    assert "default" in names
    for name in names:
        if name in ("caltech256", "food101"):   # pretrained weights needed: tests/test_photo_sets.py validates them
            continue
        Experiment.load(name).validate()


def test_yaml_round_trip(tmp_path):
    exp = Experiment.load("default").with_overrides(["curriculum.temperature=2", "curriculum.order=[2,0,1]"])
    path = tmp_path / "e.yaml"
    path.write_text(exp.to_yaml())
    again = Experiment.from_yaml(path)
    assert again == exp
    assert again.curriculum.temperature == 2.0 and again.curriculum.order == [2, 0, 1]


def test_unquoted_ratio_stays_a_ratio(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("data:\n  ratio: 2:1:1\n")
    exp = Experiment.from_yaml(path)
    assert exp.data.ratio == "2:1:1" and exp.num_groups() == 3


@pytest.mark.parametrize("overrides, field", [
    (["curriculum.temperature=0"], "curriculum.temperature"),
    (["curriculum.splits=[2,1,3]"], "curriculum.splits"),
    (["curriculum.splits=[1,2,9]"], "curriculum.splits[2]"),
    (["curriculum.splits=[1,3]"], "curriculum.splits"),
    (["curriculum.order=[0,0,1]"], "curriculum.order"),
    (["curriculum.order=[0,1]"], "curriculum.order"),
    (["curriculum.grade_epochs=[1,1,0]"], "curriculum.grade_epochs[2]"),   # an early grade may have 0
    (["student.arch=resnet9"], "student.arch"),
    (["methods=[ed,distill]"], "methods"),
    (["data.source=mnist"], "data.source"),
])
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        Experiment.load("default").with_overrides(overrides).validate()
    assert str(err.value).startswith(field)


def test_unknown_keys_and_bad_types():
    with pytest.raises(ConfigError, match="curriculum.temprature: unknown field"):
        Experiment.from_dict({"curriculum": {"temprature": 2}})
    with pytest.raises(ConfigError, match="unknown field curriculum.tmp"):
        Experiment().with_overrides(["curriculum.tmp=1"])
    with pytest.raises(ConfigError, match="optimizer.lr: expected float"):
        Experiment.from_dict({"optimizer": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        Experiment().with_overrides(["curriculum.temperature"])


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        Experiment.from_yaml(path)


def test_default_splits_are_even():
    exp = Experiment.from_dict({"student": {"arch": "resnet20"}})
    assert exp.splits() == [3, 6, 9]


def test_normalize_override_validated_and_round_trips(tmp_path):
    """teachers/student.normalize: auto (weights' own mean/std, else the data's), data, or explicit
    {mean, std}; anything else fails naming the field; an explicit pair survives the YAML round trip."""
    for section in ("teachers", "student"):
        assert getattr(Experiment().validate(), section).normalize == "auto"
        for bad in ("weights", "{mean: [0.5, 0.5], std: [1, 1, 1]}", "{mean: [0, 0, 0], std: [1, 0, 1]}",
                    "{mean: [0, 0, 0]}"):
            with pytest.raises(ConfigError, match=rf"^{section}\.normalize: expected auto, data or "
                                                  r"\{mean: \[r, g, b\], std: \[r, g, b\]\}"):
                Experiment.load("default").with_overrides([f"{section}.normalize={bad}"]).validate()
    exp = Experiment.load("default").with_overrides(
        ["teachers.normalize={mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}", "student.normalize=data"]).validate()
    path = tmp_path / "e.yaml"
    path.write_text(exp.to_yaml())
    again = Experiment.from_yaml(path).validate()
    assert again == exp and again.teachers.normalize == {"mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.mark.parametrize("section, override, message", [
    (DataConfig(source="mnist"), "data.source=mnist", "data.source: expected one of"),
    (DataConfig(ratio="1:x"), "data.ratio=1:x", "data.ratio: expected integers separated by ':'"),
    (TeachersConfig(epochs=0), "teachers.epochs=0", "teachers.epochs: expected a positive integer, got 0"),
    (StudentConfig(arch="resnet9"), "student.arch=resnet9", "student.arch: expected one of"),
    (CurriculumConfig(temperature=0.0), "curriculum.temperature=0", "curriculum.temperature: expected"),
    (DistillConfig(loss="mse"), "distill.loss=mse", "distill.loss: expected one of"),
    (OptimizerConfig(gamma=0.0), "optimizer.gamma=0", "optimizer.gamma: expected a number in (0, 1]"),
    (RayConfig(workers=0), "ray.workers=0", "ray.workers: expected a positive integer"),
    (OutputConfig(dir=""), "output.dir=''", "output.dir: expected a directory path"),
    (TrackingConfig(wandb=WandbConfig(mode="loud")), "tracking.wandb={mode: loud}", "tracking.wandb.mode: expected"),
])
def test_each_section_checks_its_own_fields(section, override, message):
    """A section's own fields are checked by the section alone, with the message validate() gives."""
    with pytest.raises(ConfigError) as alone:
        section.check()
    with pytest.raises(ConfigError) as whole:
        Experiment().with_overrides([override]).validate()
    assert str(alone.value).startswith(message) and str(alone.value) == str(whole.value)


@pytest.mark.parametrize("overrides, message", [
    (["curriculum.splits=[1,2,9]"], "curriculum.splits[2]: expected a block index in 1..3 (resnet8 has 3 blocks)"),
    (["curriculum.alpha=[0.3,0.3]"], "curriculum.alpha: expected one number or 3 (one per grade)"),
    (["curriculum.grade_fractions=[0.5,0.5]", "curriculum.total_epochs=10"],
     "curriculum.grade_fractions: expected 3 shares (one per grade)"),
    (["optimizer.batch_size=6", "ray.workers=4"], "optimizer.batch_size: expected a multiple of ray.workers (4)"),
    (["methods=[kd,kd+kd]"], "methods: expected no duplicates (an entry without +loss uses distill.loss: kd)"),
    (["methods=[ed+dkd]", "teachers.soft_labels=cache", "teachers.cache_format=topk"],
     "teachers.cache_format: expected float16 when a method distils with dkd (ed+dkd)"),
])
def test_rules_that_span_sections_are_experiments(overrides, message):
    """Values each section accepts on its own, refused by Experiment because of another section:
    curriculum's per-grade fields against data's groups and the student's blocks, batch sizes against
    ray.workers, methods against distill.loss, a top-k cache against the methods' losses."""
    exp = Experiment().with_overrides(overrides)
    for name in ("data", "teachers", "student", "curriculum", "distill", "optimizer", "ray", "output", "tracking"):
        getattr(exp, name).check()
    with pytest.raises(ConfigError) as err:
        exp.validate()
    assert str(err.value).startswith(message)
