"""Per-phase progress lines (rate and ETA) and phase timings."""

import logging
import time

import keras

log = logging.getLogger("tlfast")


def ensure_visible():
    """Shows tlfast's progress lines where nothing else would show them.

    Called by the library's entry points (`run_training`, ...): in a
    notebook or a plain Python session no logging is configured, so INFO
    lines would be dropped. Only tlfast's own logger is touched, and only
    when no handler would receive its lines (a script's or pytest's
    configuration is left alone).
    """
    if not log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


class Phase:
    """Times one phase and reports its progress.

    Usage:
      timings = {}
      with Phase("extract", total=n, timings=timings) as phase:
          ...; phase.update(done)

    Progress lines look like
    `[extract] 512/3119 images (16%), 245.3 images/s, ETA 11s` and are
    throttled to one every `interval` seconds.
    """

    def __init__(self, name, total=None, unit="images", timings=None,
                 interval=2.0):
        self.name, self.total, self.unit = name, total, unit
        self.timings = timings
        self.interval = interval
        self.start = self._last = None
        self.done = 0
        self._shown_done = None

    def __enter__(self):
        self.start = self._last = time.perf_counter()
        if self.total is not None:
            log.info("[%s] %d %s", self.name, self.total, self.unit)
        return self

    def update(self, done, total=None, force=False):
        if total is not None:
            self.total = total
        now = time.perf_counter()
        if (not force and now - self._last < self.interval) or (
                done == self._shown_done):  # Said already.
            self.done = done
            return
        self.done = self._shown_done = done
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        line = f"[{self.name}] {done}"
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            line += (f"/{self.total} {self.unit} ({done / self.total:.0%}), "
                     f"{rate:.1f} {self.unit}/s, ETA {eta:.0f}s")
        else:
            line += f" {self.unit}, {rate:.1f} {self.unit}/s"
        log.info(line)

    @property
    def seconds(self):
        return time.perf_counter() - self.start

    def __exit__(self, exc_type, exc, tb):
        seconds = self.seconds
        if self.timings is not None:
            self.timings[self.name] = round(
                self.timings.get(self.name, 0.0) + seconds, 3)
        if exc_type is None:
            rate = f", {self.done / seconds:.1f} {self.unit}/s" if self.done else ""
            log.info("[%s] done in %.1fs%s", self.name, seconds, rate)
        return False


class EpochLogger(keras.callbacks.Callback):
    """A line per epoch with the metrics, samples/s and ETA.

    With `interval`, epochs closer than that many seconds to the last line
    shown are logged at DEBUG only (the run's log file keeps them): the
    head's 50 epochs of milliseconds each are one line, not 50.
    """

    def __init__(self, name, samples_per_epoch, interval=0.0):
        super().__init__()
        self.name, self.samples = name, samples_per_epoch
        self.interval = interval
        self._shown = None

    def on_train_begin(self, logs=None):
        self.start = self._shown = time.perf_counter()
        self._last = None

    def on_train_end(self, logs=None):
        if self._last is not None:  # The last epoch, if not shown yet.
            log.info(*self._last)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_start
        total = self.params.get("epochs") or epoch + 1
        eta = (time.perf_counter() - self.start) / (epoch + 1) * (total - epoch - 1)
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())
                           if isinstance(v, (int, float)))
        line = ("[%s] epoch %d/%d %s, %.0f samples/s, ETA %.0fs", self.name,
                epoch + 1, total, metrics, self.samples / max(seconds, 1e-9), eta)
        now = time.perf_counter()
        if now - self._shown >= self.interval:
            log.info(*line)
            self._shown, self._last = now, None
        else:
            log.debug(*line)
            self._last = line
