"""Soft-label cache: the replayed augmentation is the recorded one, cached logits equal a fresh
teacher forward (float16 tolerance), any change of teacher weights or data gives a new cache,
top-k round-trips, and a `run` with soft_labels=cache works end to end and reuses its cache."""
import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import first_per_class, tiny_experiment
from raydistill.config import ConfigError
from raydistill.data import crop_flip
from raydistill.distill.curriculum import plan_ed
from raydistill.distill.engine import TrainContext, TrainSettings, build_optimizer, grade_model, train_epoch
from raydistill.models import build_model
from raydistill.pipeline.local import run
from raydistill.softlabels import AugmentationBank, SoftLabelCacheError, ensure_soft_label_cache
from raydistill.softlabels import store
from raydistill.softlabels.build import teacher_samples
from raydistill.teachers import FrozenTeacher


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose ~10x when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_teachers(data, arch="resnet8", seed=0):
    """Untrained but fixed teachers: the cache only cares that they are frozen."""
    torch.manual_seed(seed)
    teachers = {}
    for p, classes in enumerate(data.groups):
        model = build_model(arch, len(classes))
        model.class_ids.copy_(torch.tensor(classes))
        teachers[f"group{p}"] = FrozenTeacher(model, data.mean, data.std)
    return teachers


def cache_exp(tmp_path, **kw):
    return tiny_experiment(tmp_path, **{"teachers.soft_labels": "cache", "teachers.cache_draws": 3, **kw})


@pytest.fixture(scope="module")
def small(tiny_data):
    """The tiny data with 20 training samples per class (120): a cache over it builds in a blink."""
    return first_per_class(tiny_data, 20)


@pytest.fixture(scope="module")
def built(small, tmp_path_factory):
    """One cache over the small data with random resnet8 teachers (3 draws), built in-process."""
    exp = cache_exp(tmp_path_factory.mktemp("cache"))
    teachers = random_teachers(small)
    return exp, teachers, ensure_soft_label_cache(exp, small, teachers)


def test_bank_is_fixed_by_seed_and_draws_are_crops_and_flips():
    a, b = AugmentationBank.make(50, 4, seed=3), AugmentationBank.make(50, 4, seed=3)
    assert torch.equal(a.draws, b.draws) and not torch.equal(a.draws, AugmentationBank.make(50, 4, seed=4).draws)
    assert a.draws.shape == (50, 4, 3) and int(a.draws[..., :2].min()) >= 0 and int(a.draws[..., :2].max()) <= 8
    assert set(a.draws[..., 2].unique().tolist()) == {0, 1}
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    identity = crop_flip(x, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]), padding=4)
    assert torch.equal(identity[0], x[0]) and torch.equal(identity[1], x[1].flip(-1))
    shifted = crop_flip(x, torch.tensor([[0, 0], [8, 8]]), None, padding=4)   # zero padding comes in
    assert torch.equal(shifted[0, :, 4:, 4:], x[0, :, :4, :4]) and shifted[0, :, :4].eq(0).all()
    assert torch.equal(shifted[1, :, :4, :4], x[1, :, 4:, 4:]) and shifted[1, :, 4:].eq(0).all()


class Recording:
    """Wraps the cache client; records what the engine trained on and what it was served."""

    def __init__(self, client):
        self.client, self.replay, self.calls = client, client.replay, []

    def submit(self, key, images, index=None, draw=None):
        logits = self.client.submit(key, images, index=index, draw=draw)
        self.calls.append((key, images.clone(), index.clone(), draw.clone(), logits))
        return logits

    def fetch(self, handle):
        return handle


def test_replayed_augmentation_equals_the_recorded_one(built, small):
    """The images the student trains on in epoch e are the bank's draw e mod A of each sample, and
    the cached logits it receives are the teacher's logits of exactly those images."""
    exp, teachers, cache = built
    data, bank = small, cache.bank
    plan = plan_ed("resnet8", 3, data.groups, [1, 2, 3], [0, 1, 2], [1, 1, 1], [16, 16], pass_mode="mixed")
    grade = plan.grades[-1]
    s = TrainSettings(batch_size=32, mean=tuple(data.mean), std=tuple(data.std), schedule="constant")
    client = Recording(cache.client())
    seen_draws = set()
    for epoch in (0, 1, 4):          # 4 = 1 mod 3: the second cycle replays draw 1
        client.calls.clear()
        model = grade_model(plan, grade, data.num_classes, s)
        train_epoch(model, build_optimizer(model, s, 0.0), grade, "mixed", data.train, client, s, TrainContext(),
                    epoch)
        assert sum(len(c[2]) for c in client.calls) >= len(data.train) - 1
        for key, images, index, draw, logits in client.calls:
            assert draw.eq(epoch % bank.num_draws).all()
            d = bank.draws[index, epoch % bank.num_draws].long()
            assert torch.equal(images, crop_flip(data.train.images[index], d[:, :2], d[:, 2].bool(), 4))
            torch.testing.assert_close(logits, teachers[key](images), rtol=2e-3, atol=2e-3)
            seen_draws.add(int(draw[0]))
    assert seen_draws == {0, 1}


def test_imagenet_preset_cache_replays_resized_crops(small, tmp_path):
    """augment imagenet: the bank holds crop boxes of the decoded square; the student trains on the
    bank's random-resized crops at image_size and is served the teacher's logits of exactly those."""
    from raydistill.data import ImageSet, resized_crop_flip
    from raydistill.data.augment import square
    decoded = replace(small, train=ImageSet(square(small.train.images, 37), small.train.labels,
                                            small.train.class_names))
    exp = cache_exp(tmp_path, **{"data.augment": "imagenet", "data.image_size": 32})
    teachers = random_teachers(decoded)
    cache = ensure_soft_label_cache(exp, decoded, teachers)
    bank = cache.bank
    assert (bank.preset, bank.size, bank.source_size, tuple(bank.draws.shape)) == ("imagenet", 32, 37, (120, 3, 5))
    plan = plan_ed("resnet8", 3, decoded.groups, [1, 2, 3], [0, 1, 2], [1, 1, 1], [16, 16], pass_mode="mixed")
    s = TrainSettings(batch_size=32, mean=tuple(decoded.mean), std=tuple(decoded.std), schedule="constant",
                      augment="imagenet", image_size=32)
    client = Recording(cache.client())
    model = grade_model(plan, plan.grades[-1], decoded.num_classes, s)
    train_epoch(model, build_optimizer(model, s, 0.0), plan.grades[-1], "mixed", decoded.train, client, s,
                TrainContext(), 1)
    assert client.calls
    for key, images, index, draw, logits in client.calls:
        d = bank.draws[index, 1].long()
        assert images.shape[1:] == (3, 32, 32)
        assert torch.equal(images, resized_crop_flip(decoded.train.images[index], d[:, :4], d[:, 4].bool(), 32))
        torch.testing.assert_close(logits, teachers[key](images), rtol=2e-3, atol=2e-3)


class InputProbe(torch.nn.Module):
    """The student, recording every input batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_scratch_under_the_cache_replays_the_same_bank(built, small, tmp_path):
    """With the cache on, the teacherless `scratch` plan gets the cache's bank and trains on exactly
    the replayed images (the bank's draw e mod A), not fresh random crops."""
    from raydistill.distill.curriculum import plan_for
    from raydistill.data import normalize
    from raydistill.distill.engine import shard_batches
    from raydistill.pipeline.stages import method_stage
    exp, teachers, cache = built
    given = {}

    def capture(plan, train, val, test, client, settings, log=None, stage=None):
        given["client"] = client
        raise StopIteration
    with pytest.raises(StopIteration):
        method_stage(exp.with_overrides(["methods=[scratch]"]), small, tmp_path, "scratch", cache.client(), None,
                     capture)
    client = given["client"]
    assert client.replay is cache.bank
    plan = plan_for("scratch", exp, small.groups)
    s = TrainSettings(batch_size=32, mean=tuple(small.mean), std=tuple(small.std), schedule="constant", seed=5)
    epoch = 2
    probe = InputProbe(grade_model(plan, plan.grades[0], small.num_classes, s))
    train_epoch(probe, build_optimizer(probe, s, 0.0), plan.grades[0], "mixed", small.train, client, s,
                TrainContext(channels_last=False), epoch)
    everything = torch.arange(len(small.train))
    for (index, _), x in zip(shard_batches(everything, 32, s.seed, epoch, 0, 0, 1), probe.inputs):
        draw = cache.bank.draw_at(index, epoch)
        expected = normalize(cache.bank.apply(small.train.images[index], index, draw), s.mean, s.std)
        torch.testing.assert_close(x, expected)
    assert len(probe.inputs) >= 3
    # without the cache, scratch gets no client (fresh augmentation, as before)
    with pytest.raises(StopIteration):
        method_stage(exp.with_overrides(["teachers.soft_labels=online"]), small, tmp_path, "scratch",
                     cache.client(), None, capture)
    assert given["client"] is None


def test_cached_logits_equal_a_fresh_teacher_forward(built, small):
    exp, teachers, cache = built
    assert cache.build_seconds is not None and (cache.directory / "meta.json").is_file()
    assert sorted(p.name for p in cache.directory.glob("*.parquet")) == ["group0.parquet", "group1.parquet",
                                                                        "group2.parquet"]
    train = small.train
    for key, teacher in teachers.items():
        samples = teacher_samples(teacher.class_ids, train.labels)
        labels = cache.labels[key]
        assert torch.equal(labels.samples, samples) and labels.values.dtype == torch.float16
        for a in range(cache.bank.num_draws):
            draw = torch.full((len(samples),), a, dtype=torch.long)
            fresh = teacher(cache.bank.apply(train.images[samples], samples, draw))
            torch.testing.assert_close(labels.logits(samples, draw), fresh, rtol=2e-3, atol=2e-3)
    again = ensure_soft_label_cache(exp, small, teachers)      # same key: read back, not rebuilt
    assert again.build_seconds is None and again.directory == cache.directory
    for key in teachers:
        assert torch.equal(again.labels[key].values, cache.labels[key].values)
        assert torch.equal(again.labels[key].samples, cache.labels[key].samples)


def test_changed_teacher_weights_or_data_invalidate_the_cache(built, small):
    exp, teachers, cache = built
    changed = dict(teachers)
    model = build_model("resnet8", len(small.groups[1]))
    model.load_state_dict(teachers["group1"].model.state_dict())
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3      # one weight, slightly
    changed["group1"] = FrozenTeacher(model, small.mean, small.std)
    rebuilt = ensure_soft_label_cache(exp, small, changed)
    assert rebuilt.key != cache.key and rebuilt.directory != cache.directory and rebuilt.build_seconds is not None
    assert not torch.equal(rebuilt.labels["group1"].values, cache.labels["group1"].values)
    assert torch.equal(rebuilt.labels["group0"].values, cache.labels["group0"].values)
    images = small.train.images.clone()
    images[0, 0, 0, 0] ^= 1
    data = replace(small, train=replace(small.train, images=images))
    assert ensure_soft_label_cache(exp, data, teachers).key not in (cache.key, rebuilt.key)
    assert ensure_soft_label_cache(exp.with_overrides(["teachers.cache_draws=2"]), small, teachers).key \
        != cache.key
    assert ensure_soft_label_cache(exp, small, teachers).key == cache.key     # unchanged: same cache


def test_changed_draws_with_the_same_bank_parameters_invalidate_the_cache(built, small, monkeypatch):
    """What if the code that makes or applies draws changes while the bank's parameters do not:
    the key hashes the draws and their effect, so stale logits are never read."""
    import raydistill.softlabels.cache as cache_module
    exp, teachers, cache = built
    original = cache_module.bank_for

    def shifted(exp, n):           # the same parameters, other draws (as changed bank code would give)
        bank = original(exp, n)
        return AugmentationBank(torch.roll(bank.draws, 1, dims=0), bank.padding, bank.flip, bank.seed)

    monkeypatch.setattr(cache_module, "bank_for", shifted)
    other = ensure_soft_label_cache(exp, small, teachers)
    assert other.bank.params() == cache.bank.params()
    assert other.key != cache.key and other.build_seconds is not None


def test_topk_cache_key_holds_the_temperature(built, small):
    exp, teachers, _ = built
    topk = exp.with_overrides(["teachers.cache_format=topk"])
    a = ensure_soft_label_cache(topk, small, teachers)
    b = ensure_soft_label_cache(topk.with_overrides(["curriculum.temperature=2"]), small, teachers)
    assert a.key != b.key


def test_topk_round_trip(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(40, 3, 10) * 3
    samples = torch.arange(0, 80, 2)
    labels = store.encode(samples, logits, "topk", 4)
    (tmp_path / "t").mkdir()
    table = store.to_table("group0", labels)
    assert table.schema.field("topk_values").type.value_type.bit_width == 16
    back = store.from_table(table.take(torch.randperm(len(table)).numpy()), 3, tmp_path / "t.parquet")  # any order
    draw = torch.tensor([0, 2, 1, 0])
    index = samples[[0, 5, 17, 39]]
    rec = back.logits(index, draw)
    orig = logits[[0, 5, 17, 39], draw]
    top = orig.topk(4, dim=1)
    torch.testing.assert_close(rec.gather(1, top.indices), top.values, rtol=1e-3, atol=5e-3)
    rest = torch.ones_like(orig, dtype=torch.bool).scatter_(1, top.indices, False)
    # encoded at T=1 (the default): the tail value is the log-mean-exp of the logits left out
    expected_rest = torch.logsumexp(orig.masked_fill(~rest, float("-inf")), dim=1) - math.log(6)
    torch.testing.assert_close(rec[rest].view(4, 6), expected_rest[:, None].expand(4, 6), rtol=1e-3, atol=5e-3)
    assert (rec[rest].view(4, 6).max(1).values <= top.values[:, -1] + 1e-2).all()
    assert torch.equal(rec.argmax(1), orig.argmax(1))
    with pytest.raises(SoftLabelCacheError, match="expected every sample once per draw"):
        store.from_table(table.slice(1), 3, tmp_path / "t.parquet")
    with pytest.raises(SoftLabelCacheError, match=r"no logits for training samples \[1\]"):
        back.logits(torch.tensor([1]), torch.tensor([0]))


def test_topk_tail_keeps_the_softmax_mass_at_the_cache_temperature():
    """33 classes, k=5, T=4 (the issue's case): the reconstruction's softmax at T has the teacher's
    top-5 probabilities and tail mass (a mean-logit tail underestimates that mass); the KL left to
    the full softmax is what spreading the tail evenly costs."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    t, logits = 4.0, torch.randn(64, 1, 33) * 4
    rec = store.encode(torch.arange(64), logits, "topk", 5, temperature=t).logits(torch.arange(64),
                                                                               torch.zeros(64, dtype=torch.long))
    p, q = F.softmax(logits[:, 0] / t, dim=1), F.softmax(rec / t, dim=1)
    top = logits[:, 0].topk(5, dim=1).indices
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    torch.testing.assert_close((q * tail).sum(1), (p * tail).sum(1), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top), rtol=2e-3, atol=2e-3)
    kl = (p * (p.log() - q.log())).sum(1).mean().item()
    mean_tail = logits[:, 0].masked_fill(~tail, 0).sum(1, keepdim=True) / 28
    kl_mean = (p * (p.log() - F.log_softmax(torch.where(tail, mean_tail, logits[:, 0]) / t, dim=1))).sum(1).mean()
    print(f"topk tail KL at T=4: log-mean-exp {kl:.4f}, mean logit {kl_mean.item():.4f}")
    assert kl < kl_mean.item()
    mean_mass = (F.softmax(torch.where(tail, mean_tail, logits[:, 0]) / t, dim=1) * tail).sum(1)
    assert (mean_mass < (p * tail).sum(1) - 1e-3).all()          # what the fix removes


def test_interrupted_build_leaves_no_cache(built, small, tmp_path, monkeypatch):
    exp, teachers, _ = built
    exp = exp.with_overrides([f"teachers.cache_dir={tmp_path / 'c'}"])
    calls = []

    def failing(table, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(table, path, **kw)

    original = store.pq.write_table
    monkeypatch.setattr(store.pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        ensure_soft_label_cache(exp, small, teachers)
    # nothing but the key's lock file (kept: removing a lock file would let two builders in)
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_fields_are_validated(tmp_path):
    for field, value, match in (("soft_labels", "cached", "teachers.soft_labels"),
                                ("cache_draws", 0, "teachers.cache_draws"),
                                ("cache_format", "int8", "teachers.cache_format"),
                                ("cache_topk", 0, "teachers.cache_topk"),
                                ("cache_dir", "s3://bucket/x", "teachers.cache_dir")):
        with pytest.raises(ConfigError, match=match):
            tiny_experiment(tmp_path, **{f"teachers.{field}": value}).validate()


def test_local_run_with_cached_soft_labels_reuses_the_cache(tmp_path):
    overrides = {"methods": "[ed,scratch]", "teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                 "data.train_per_class": 40, "data.test_per_class": 10,
                 "teachers.cache_format": "topk", "teachers.cache_topk": 1}
    logs = [[], []]
    results = [run(cache_exp(tmp_path, **overrides, **{"output.name": f"r{i}"}), progress=logs[i].append)
               for i in range(2)]
    caches = [p for p in (tmp_path / "softlabels").iterdir() if not p.name.startswith(".")]   # not .<key>.lock
    assert len(caches) == 1
    meta = json.loads((caches[0] / "meta.json").read_text())
    assert meta["storage"] == {"format": "topk", "topk": 1, "temperature": 4.0} and meta["bank"]["draws"] == 3
    assert set(meta["files"]) == {"group0", "group1", "group2"}
    assert any("building cache" in line for line in logs[0]) and any("loaded" in line for line in logs[1])
    assert not any("building cache" in line for line in logs[1])
    # the loaded cache serves what the built one did: every epoch's loss terms are identical
    terms = [[(h["method"], h["loss"], h["kd"]) for h in r.history] for r in results]
    assert terms[0] == terms[1] and len([t for t in terms[0] if t[0] == "ed"]) == 3
    assert all(kd > 0 for method, _, kd in terms[0] if method == "ed")
    a, b = (torch.load(r.run_dir / "checkpoints" / "ed.pt", weights_only=True)["state_dict"] for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)   # same seed, replayed cache: identical student


def test_logits_beyond_float16_are_refused_not_stored_as_inf():
    with pytest.raises(SoftLabelCacheError, match="beyond float16"):
        store.encode(torch.arange(2), torch.full((2, 1, 3), 1e6), "float16", 5)


def test_cli_soft_labels_flag_sets_the_field():
    from raydistill.cli import _load, build_parser
    assert _load(build_parser().parse_args(["run", "--soft-labels", "cache"])).teachers.soft_labels == "cache"
    assert _load(build_parser().parse_args(["run"])).teachers.soft_labels == "online"
