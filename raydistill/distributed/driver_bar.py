"""The progress bar of a Ray run, drawn by the driver on its terminal.

Ray Train V2 calls a `UserCallback` in its controller actor, whose stdout is not the terminal (Ray
forwards it, prefixed, line by line), so the callback only forwards each epoch report through a Ray
queue; a thread of the driver draws one `progress.StageBar` per stage. A one-worker task puts its
epochs on the same queue itself (`worker.SoloSession`). Workers then leave out their per-epoch
lines (`driver_bar` in the worker config).
"""
from __future__ import annotations

import threading
from typing import Optional, TextIO

from raydistill.pipeline.progress import StageBar
from raydistill.pipeline.tracking import stage_label

FORWARDED = ("stage", "epoch", "grade", "val_acc", "images_per_s", "stage_epochs", "stage_grades")


def forward_epoch(queue, report: dict) -> None:
    """Put one epoch report of rank 0 (not the final "done" report) on the bar's `queue`."""
    if "stage_epochs" in report:
        queue.put({k: report[k] for k in FORWARDED if k in report})


def epoch_forwarder(queue):
    """A Ray Train UserCallback that puts rank 0's epoch reports (not the final "done" report) on `queue`."""
    from ray.train import UserCallback

    class ForwardEpochs(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            forward_epoch(queue, metrics[0] if metrics else {})

    return ForwardEpochs()


class DriverBar:
    """Start before the stages run; pass `callback` in a fit's callbacks, or `queue` to tasks; `close()`
    after they return."""

    def __init__(self, stream: Optional[TextIO] = None):
        from ray.util.queue import Queue
        self.stream = stream
        self.queue = Queue()
        self.callback = epoch_forwarder(self.queue)
        self.bar: Optional[StageBar] = None
        self.stage: Optional[str] = None
        self.thread = threading.Thread(target=self._draw, name="raydistill-progress", daemon=True)
        self.thread.start()

    def _draw(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                break
            if item["stage"] != self.stage:
                if self.bar is not None:
                    self.bar.close()
                self.stage = item["stage"]
                self.bar = StageBar(stage_label(item["stage"]), item["stage_epochs"], item.get("stage_grades", 1),
                                    stream=self.stream)
            self.bar.update(item)
        if self.bar is not None:
            self.bar.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)
        self.queue.shutdown()
