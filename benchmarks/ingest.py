"""Data ingest: decode-once shards and `data.loader: memory` vs `stream`, measured.

  first-step  memory mode's time to the first training step is dominated by `prepare_data`:
              measured for the first run (decode, in parallel, and store shards) and a second run
              (load the decoded shards), same data configuration, fresh cache directory.
  train       (--train) one `scratch` run of 2 epochs with Ray Train (1 worker) per loader, on the
              same Parquet set at 1x and --replicas x size (the train file's rows, the first
              --train-per-class of each label if given, repeated): student images/s of the last
              epoch from the run's history, and peak RSS of the Ray Train worker process (sampled
              every 0.2 s with psutil). Memory mode should grow with the set, stream mode should not.
  accuracy    (--accuracy) `ed` at the shipped `cifar10` budget through Ray Train, memory vs stream,
              per seed, same teachers (--teachers-from) and cached soft labels: last-epoch accuracy.
  tables      (--table-only) the README's tables from the result files.

The committed results (benchmarks/results/ingest) came from benchmarks/results/ingest/commands.sh,
which holds the exact invocations (one per measurement, then --table-only).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def native_size(parquet_path) -> int:
    """Side of the first image of a Parquet table (CIFAR-10: 32, Tiny-ImageNet: 64)."""
    import pyarrow.parquet as pq
    first = pq.ParquetFile(parquet_path).read_row_group(0, columns=["img"]).column("img")[0]["bytes"].as_py()
    from torchvision.io import decode_image
    import torch
    return int(decode_image(torch.frombuffer(bytearray(first), dtype=torch.uint8)).shape[-1])


def experiment(train_path: str, test_path: str, out: Path, cache: Path, limit, extra=()):
    from raydistill.config import Experiment
    # decoded at the tables' native size with the cifar preset (a Parquet source would default to 224 px)
    size = native_size(train_path)
    overrides = ["data.source=parquet", f"data.train_path={train_path}", f"data.test_path={test_path}",
                 f"data.image_size={size}", "data.augment=cifar",
                 f"data.cache_dir={cache}", f"output.dir={out}", "data.ratio=1:1", "methods=[scratch]",
                 "curriculum.splits=[1,3]", "curriculum.grade_epochs=[1,1]", "student.arch=resnet8",
                 "curriculum.pass_mode=mixed", *extra]
    if limit:
        overrides.append(f"data.limit_per_class={limit}")
    return Experiment().with_overrides(overrides)


def first_step(train_path, test_path, limit, work: Path) -> dict:
    """prepare_data wall time: decode + store, then load the shards."""
    from raydistill.pipeline.prepare import prepare_data
    exp = experiment(train_path, test_path, work / "runs", work / "decoded", limit)
    rows = {}
    for name in ("decode (first run)", "decoded shards (second run)"):
        lines = []
        started = time.perf_counter()
        data = prepare_data(exp, lines.append)
        rows[name] = {"seconds": round(time.perf_counter() - started, 2), "train": len(data.train),
                      "val": len(data.val), "test": len(data.test), "log": lines}
        print(name, rows[name], flush=True)
    return rows


class PeakRSS:
    """Peak memory of processes whose command line names a Ray Train worker: resident set (RSS),
    and its two parts from /proc/<pid>/status — private anonymous memory (RssAnon: the worker's own
    heap and tensors) and shared memory (RssShmem: pages of Ray's object store the worker has
    mapped and touched; they belong to the node's store, bounded by its size, not to the worker)."""

    def __init__(self, marker="RayTrainWorker"):
        self.marker, self.peak, self.peak_anon, self.peak_shmem = marker, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _status_kb(pid: int) -> dict:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return {}
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines)
                if k in ("RssAnon", "RssShmem")}

    def _poll(self):
        import psutil
        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if self.marker in cmd and p.info["memory_info"] is not None:
                    self.peak = max(self.peak, p.info["memory_info"].rss)
                    parts = self._status_kb(p.pid)
                    self.peak_anon = max(self.peak_anon, parts.get("RssAnon", 0) * 1024)
                    self.peak_shmem = max(self.peak_shmem, parts.get("RssShmem", 0) * 1024)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def replicate(path: str, times: int, out: Path, per_class=None) -> str:
    """The Parquet file (its first `per_class` rows of each label, if given) with its rows repeated
    `times` times (same schema and label names)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    if times == 1 and not per_class:
        return path
    table = pq.read_table(path)
    if per_class:
        labels = table.column("label").to_numpy()
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        table = table.take(pa.array(np.sort(keep)))
    target = out / f"{Path(path).stem}-{per_class or 'all'}-x{times}.parquet"
    pq.write_table(pa.concat_tables([table] * times), target)
    return str(target)


def train_runs(train_path, test_path, limit, replicas: int, work: Path) -> list:
    from raydistill.distributed.trainer import run_distributed
    rows = []
    for times in sorted({1, replicas}):
        train = replicate(train_path, times, work, limit)
        for loader in ("memory", "stream"):
            exp = experiment(train, test_path, work / f"runs-{loader}-{times}", work / "decoded", None,
                             [f"data.loader={loader}", "ray.workers=1", "ray.cpus_per_worker=1"])
            started = time.perf_counter()
            with PeakRSS() as rss:
                result = run_distributed(exp, progress=None)
            epoch = [h for h in result.history if h["method"] == "scratch"][-1]
            row = {"loader": loader, "size": f"{times}x", "train_images": epoch["train_images"],
                   "images_per_s": round(epoch["images_per_s"], 1), "peak_worker_rss_mb": round(rss.peak / 2**20),
                   "peak_worker_anon_mb": round(rss.peak_anon / 2**20),
                   "peak_worker_shmem_mb": round(rss.peak_shmem / 2**20),
                   "wall_s": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(row, flush=True)
    return rows


def accuracy_runs(data: Path, seeds, teachers_from, work: Path) -> list:
    """ED at the shipped `cifar10` budget through Ray Train (1 worker), memory vs stream, per seed:
    the same teachers (loaded from --teachers-from) and cached soft labels, last-epoch accuracy."""
    from raydistill.config import Experiment
    from raydistill.distributed.trainer import run_distributed
    teachers = {p.stem: str(p.resolve()) for p in sorted(Path(teachers_from).glob("*.pt"))}
    rows = []
    for seed in seeds:
        for loader in ("memory", "stream"):
            exp = Experiment.load("cifar10").with_overrides([
                f"seed={seed}", "methods=[ed]", f"data.train_path={data / 'train.parquet'}",
                f"data.test_path={data / 'test.parquet'}", f"data.loader={loader}",
                f"data.cache_dir={work / 'decoded'}", f"teachers.checkpoints={json.dumps(teachers)}",
                "teachers.soft_labels=cache", f"teachers.cache_dir={work / 'softlabels'}",
                f"output.dir={work / 'runs'}", f"output.name=ed-{loader}-seed{seed}",
                "ray.workers=1", "ray.cpus_per_worker=1"]).validate()
            started = time.perf_counter()
            result = run_distributed(exp, progress=None)
            last = [h for h in result.history if h["method"] == "ed"][-1]
            row = {"loader": loader, "seed": seed, "epochs": last["epoch"], "val_acc": round(last["val_acc"], 4),
                   "test_acc": round(last["test_acc"], 4), "images_per_s": round(last["images_per_s"], 1),
                   "wall_s": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(row, flush=True)
    return rows


def _mean_std(values, digits: int = 2) -> str:
    import statistics
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.{digits}f}"


def tables(results: Path) -> str:
    """The README's ingest tables from the committed result files (whichever exist)."""
    out = []
    rss = results / "train_tinyimagenet.json"
    if rss.is_file():
        r = json.loads(rss.read_text())
        rows = {(x["loader"], x["size"]): x for x in r["train"]}
        sizes = sorted({x["size"] for x in r["train"]}, key=lambda z: int(z[:-1]))
        out += ["| loader | set | train images | peak worker RSS | private (RssAnon) | object store pages (RssShmem) "
                "| student img/s |", "|---|---|---:|---:|---:|---:|---:|"]
        for loader in ("memory", "stream"):
            for z in sizes:
                x = rows[(loader, z)]
                out.append(f"| `{loader}` | {z} | {x['train_images']:,} | {x['peak_worker_rss_mb']:,} MB | "
                           f"{x['peak_worker_anon_mb']:,} MB | {x['peak_worker_shmem_mb']:,} MB | {x['images_per_s']:.0f} |")
            first, last = rows[(loader, sizes[0])], rows[(loader, sizes[-1])]
            out.append(f"| `{loader}` | {sizes[-1]} / {sizes[0]} | | {last['peak_worker_rss_mb'] / first['peak_worker_rss_mb']:.2f}x "
                       f"| {last['peak_worker_anon_mb'] / first['peak_worker_anon_mb']:.2f}x "
                       f"| {last['peak_worker_shmem_mb'] / first['peak_worker_shmem_mb']:.2f}x | |")
        out.append("")
    thr = results / "throughput_cifar10.json"
    if thr.is_file():
        r = json.loads(thr.read_text())
        speed = {x["loader"]: x["images_per_s"] for x in r["train"]}
        out += ["| CIFAR-10 (45,000 train images, 32 px) | student img/s | vs memory |", "|---|---:|---:|"]
        out += [f"| `{k}` | {v:.1f} | {v / speed['memory']:.3f} |" for k, v in speed.items()]
        out.append("")
        if "first_step" in r:
            out += ["| memory mode, CIFAR-10 60,000 images | `prepare_data` wall time |", "|---|---:|"]
            out += [f"| {k} | {v['seconds']:.1f} s |" for k, v in r["first_step"].items()]
            out.append("")
    acc = results / "accuracy_cifar10.json"
    if acc.is_file():
        rows = json.loads(acc.read_text())["accuracy"]
        out += ["| loader | `ed` test top-1 % (mean ± std) | per seed | val % | student img/s |",
                "|---|---:|---|---:|---:|"]
        for loader in ("memory", "stream"):
            mine = sorted((x for x in rows if x["loader"] == loader), key=lambda x: x["seed"])
            test, val = [100 * x["test_acc"] for x in mine], [100 * x["val_acc"] for x in mine]
            out.append(f"| `{loader}` | {_mean_std(test)} | {' / '.join(f'{t:.2f}' for t in test)} | "
                       f"{_mean_std(val)} | {_mean_std([x['images_per_s'] for x in mine], 0)} |")
    return "\n".join(out).strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"),
                   help="folder with train.parquet and test.parquet")
    p.add_argument("--limit-per-class", type=int, default=None)
    p.add_argument("--train", action="store_true", help="also the Ray Train runs (peak RSS, images/s)")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--train-per-class", type=int, default=None,
                   help="--train: the first N training images per label before replicating (default: all)")
    p.add_argument("--no-first-step", action="store_true", help="skip the prepare_data timing")
    p.add_argument("--accuracy", action="store_true",
                   help="ED test accuracy memory vs stream at the cifar10 budget, --seeds, --teachers-from")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teachers-from", type=Path, help="--accuracy: group<i>.pt teacher checkpoints")
    p.add_argument("--name", default="ingest", help="result file name: <results>/<name>.json")
    p.add_argument("--table-only", action="store_true", help="print and write <results>/table.md from its files")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "ingest"))
    args = p.parse_args(argv)
    if args.table_only:
        text = tables(Path(args.results))
        (Path(args.results) / "table.md").write_text(text + "\n")
        print(text)
        return 0
    data = Path(args.data)
    train_path, test_path = str((data / "train.parquet").resolve()), str((data / "test.parquet").resolve())
    results = {"data": str(data), "limit_per_class": args.limit_per_class}
    if args.accuracy and not args.teachers_from:
        p.error("--accuracy needs --teachers-from (a directory of group<i>.pt checkpoints)")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_first_step:
            results["first_step"] = first_step(train_path, test_path, args.limit_per_class, Path(tmp))
        if args.train:
            results["train_per_class"] = args.train_per_class
            results["train"] = train_runs(train_path, test_path, args.train_per_class, args.replicas, Path(tmp))
        if args.accuracy:
            results["accuracy"] = accuracy_runs(data.resolve(), args.seeds, args.teachers_from, Path(tmp))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / f'{args.name}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
