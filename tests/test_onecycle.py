"""The one-cycle schedule (teachers' fast-training recipe): a linear rise over `warmup_fraction` of
the run, then a linear fall to 0, set every training step (a per-epoch value would spend the whole
first epoch at lr 0 on a short run)."""
import pytest

from raydistill.distill.curriculum import plan_single_grade
from raydistill.distill.engine import TrainSettings, learning_rate, train_plan
from raydistill.teachers.training import teacher_plan


def test_onecycle_shape():
    plan = plan_single_grade("scratch", "resnet8", 3, [[0], [1], [2]], 10)
    s = TrainSettings(lr=0.2, schedule="onecycle", warmup_fraction=0.2)
    assert [round(learning_rate(s, plan, e), 6) for e in (0, 1, 2, 6, 10)] == [0.0, 0.1, 0.2, 0.1, 0.0]
    assert learning_rate(s, plan, 0.5) == pytest.approx(0.05)


def test_onecycle_sets_the_lr_every_step(tiny_data):
    data = tiny_data
    classes = data.groups[0]
    s = TrainSettings(lr=0.1, schedule="onecycle", warmup_fraction=0.5, batch_size=16, mean=tuple(data.mean),
                      std=tuple(data.std), label_smoothing=0.1)
    seen = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        _, history = train_plan(teacher_plan("resnet8", classes, 2), data.train.of_classes(classes),
                                data.val.of_classes(classes), None, None, s)
    finally:
        handle.remove()
    steps = len(seen) // 2
    assert len(seen) == 2 * steps and steps > 3
    assert seen[0] == 0.0 and seen[:steps] == sorted(seen[:steps])            # rising through epoch 1
    assert seen[steps:] == sorted(seen[steps:], reverse=True) and seen[-1] > 0   # falling through epoch 2
    assert max(seen) <= 0.1 and all(a != b for a, b in zip(seen, seen[1:]))   # a new lr at every step
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05])           # each epoch's middle


def test_teacher_recipe_fields_reach_the_teacher_settings(tmp_path):
    from conftest import tiny_experiment
    from raydistill.config import ConfigError
    from raydistill.pipeline.prepare import prepare_data, teacher_settings
    exp = tiny_experiment(tmp_path, **{"teachers.schedule": "onecycle", "teachers.warmup_fraction": 0.3,
                                       "teachers.label_smoothing": 0.1, "teachers.weight_decay": 0.001})
    s = teacher_settings(exp, prepare_data(exp))
    assert (s.schedule, s.warmup_fraction, s.label_smoothing, s.weight_decay) == ("onecycle", 0.3, 0.1, 0.001)
    with pytest.raises(ConfigError, match="teachers.warmup_fraction"):
        tiny_experiment(tmp_path, **{"teachers.warmup_fraction": 1.5}).validate()
    with pytest.raises(ConfigError, match="teachers.label_smoothing"):
        tiny_experiment(tmp_path, **{"teachers.label_smoothing": -0.1}).validate()
