"""A stage's epochs as a progress bar redrawn in place, for an interactive terminal only.

Pipes, Ray Jobs, CI and log files keep the plain line per epoch (`engine.train_plan`'s progress
lines): a carriage-return bar would be one unreadable line there. tqdm is not installed with ray or
torch here, so the bar is a plain carriage-return line rather than a new dependency.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional, TextIO


def interactive(stream: Optional[TextIO] = None) -> bool:
    """True when `stream` (default stdout) is a terminal a person watches."""
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # closed, or a stream object without isatty
        return False


def duration(seconds: float) -> str:
    """12s, 3m04s, 2h05m."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class StageBar:
    """`name [#####-----] 12/30 epochs  grade 2/3  val 0.512  1234 img/s  ETA 1m23s`, redrawn after
    each epoch; the ETA is the mean time of the epochs seen by this bar times the epochs left."""

    def __init__(self, name: str, total_epochs: int, grades: int = 1, stream: Optional[TextIO] = None,
                 width: int = 24):
        self.name, self.total, self.grades, self.width = name, total_epochs, grades, width
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.first_epoch: Optional[int] = None   # a resumed stage starts past epoch 0
        self.shown = 0

    def line(self, metrics: dict, now: float) -> str:
        epoch = int(metrics["epoch"])
        if self.first_epoch is None:
            self.first_epoch = epoch - 1
        done = epoch - self.first_epoch
        eta = (now - self.started) / max(done, 1) * (self.total - epoch)
        filled = round(self.width * epoch / max(self.total, 1))
        val = metrics.get("val_acc")
        parts = [f"{self.name:>14} [{'#' * filled}{'-' * (self.width - filled)}] {epoch}/{self.total} epochs"]
        if self.grades > 1:
            parts.append(f"grade {metrics.get('grade')}/{self.grades}")
        if isinstance(val, float) and math.isfinite(val):
            parts.append(f"val {val:.3f}")
        parts.append(f"{metrics.get('images_per_s', 0):.0f} img/s")
        parts.append(f"ETA {duration(eta)}" if epoch < self.total else f"took {duration(now - self.started)}")
        return "  ".join(parts)

    def update(self, metrics: dict) -> None:
        text = self.line(metrics, time.perf_counter())
        self.stream.write("\r" + text.ljust(self.shown))   # pad over a longer previous line
        self.stream.flush()
        self.shown = len(text)

    def close(self) -> None:
        """End the bar's line, so the next output starts on its own line."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = 0
