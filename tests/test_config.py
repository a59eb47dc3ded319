import pytest

from raydistill.config import ConfigError, Experiment, shipped_experiments


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
    (["curriculum.grade_epochs=[1,0,1]"], "curriculum.grade_epochs[1]"),
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
