"""Data ingest: decode-once shards and `data.loader: memory` vs `stream`, in one invocation.

  first-step  memory mode's time to the first training step is dominated by `prepare_data`:
              measured for the first run (decode, in parallel, and store shards) and a second run
              (load the decoded shards), same data configuration, fresh cache directory.
  train       (--train) one `scratch` epoch with Ray Train (1 worker) per loader, on the same Parquet
              set at 1x and --replicas x size (the train file's rows repeated): student images/s
              from the run's history, and peak RSS of the Ray Train worker process (sampled every
              0.2 s with psutil). Memory mode should grow with the set, stream mode should not.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ingest.py --data ../shared/data/cifar10 \
        --limit-per-class 1000 --results /tmp/ingest                   # first-step only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ingest.py --data ../shared/data/tiny-imagenet-200 --train

Not measured here: ED test accuracy stream vs memory over 3 seeds (run benchmarks/accuracy.py with
`--set data.loader=stream` for that).
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
    from raydistill.workspace import prepare_data
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
    """Peak resident memory of processes whose command line names a Ray Train worker."""

    def __init__(self, marker="RayTrainWorker"):
        self.marker, self.peak, self._stop = marker, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        import psutil
        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if self.marker in cmd and p.info["memory_info"] is not None:
                    self.peak = max(self.peak, p.info["memory_info"].rss)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def replicate(path: str, times: int, out: Path) -> str:
    """The Parquet file with its rows repeated `times` times (same schema and label names)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    if times == 1:
        return path
    table = pq.read_table(path)
    target = out / f"{Path(path).stem}-x{times}.parquet"
    pq.write_table(pa.concat_tables([table] * times), target)
    return str(target)


def train_runs(train_path, test_path, limit, replicas: int, work: Path) -> list:
    from raydistill.distributed.trainer import run_distributed
    rows = []
    for times in (1, replicas):
        train = replicate(train_path, times, work)
        for loader in ("memory", "stream"):
            exp = experiment(train, test_path, work / f"runs-{loader}-{times}", work / "decoded", None,
                             [f"data.loader={loader}", "ray.workers=1", "ray.cpus_per_worker=1"])
            started = time.perf_counter()
            with PeakRSS() as rss:
                result = run_distributed(exp, progress=None)
            epoch = [h for h in result.history if h["method"] == "scratch"][-1]
            row = {"loader": loader, "size": f"{times}x", "train_images": epoch["train_images"],
                   "images_per_s": round(epoch["images_per_s"], 1), "peak_worker_rss_mb": round(rss.peak / 2**20),
                   "wall_s": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"),
                   help="folder with train.parquet and test.parquet")
    p.add_argument("--limit-per-class", type=int, default=None)
    p.add_argument("--train", action="store_true", help="also the Ray Train runs (peak RSS, images/s)")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "ingest"))
    args = p.parse_args(argv)
    data = Path(args.data)
    train_path, test_path = str((data / "train.parquet").resolve()), str((data / "test.parquet").resolve())
    results = {"data": str(data), "limit_per_class": args.limit_per_class}
    with tempfile.TemporaryDirectory() as tmp:
        results["first_step"] = first_step(train_path, test_path, args.limit_per_class, Path(tmp))
        if args.train:
            results["train"] = train_runs(train_path, test_path, args.limit_per_class, args.replicas, Path(tmp))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'ingest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
