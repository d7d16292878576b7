"""Training progress on stderr for `bnpp fit`: the callback that fit_codec reports to."""

from __future__ import annotations


class FitProgress:
    """Training progress on stderr: a Rich bar on a terminal; in a log (stderr not a terminal) one
    plain line every ``log_interval`` batches or ``log_seconds``, whichever comes first (as timm's
    train.py --log-interval). One line per finished epoch, and where a checkpoint stopped a fit."""

    def __init__(self, log_interval: int = 50, log_seconds: float = 60.0, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)  # a log line stays one line
        self.plain = not self.console.is_terminal
        self.log_interval, self.log_seconds = log_interval, log_seconds
        self.progress = self.task = None
        self._logged, self._last = 0, 0.0
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console)

    def _line(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))

    def __call__(self, event: str, info: dict) -> None:
        import time

        if event == "epoch_start":
            self._logged, self._last = info.get("start", 0), time.monotonic()
            if self.progress is not None:
                self.progress.start()
                desc = f"{info['phase']} epoch {info['epoch'] + 1}"
                self.task = self.progress.add_task(desc, total=info["batches"], completed=info.get("start", 0),
                                                   stats="")
        elif event == "batch":
            stats = f"loss {info['loss']:.3f} acc {info['acc']:.1%} {info['images_per_s']:.0f} img/s"
            if self.task is not None:
                self.progress.update(self.task, completed=info["step"], stats=stats)
            elif self.plain and (info["step"] - self._logged >= self.log_interval or info["step"] == info["batches"]
                                 or time.monotonic() - self._last >= self.log_seconds):
                self._logged, self._last = info["step"], time.monotonic()
                left = info["batches"] - info["step"]
                eta = left * info["images"] / info["step"] / info["images_per_s"] if info["images_per_s"] else 0.0
                self._line(f"{info['phase']} epoch {info['epoch'] + 1}: batch {info['step']}/{info['batches']}, "
                           f"{info['images']} images, {stats}, ETA {_duration(eta)}")
        elif event == "epoch":
            self._stop_bar()
            val = ""
            if "val_top1_noiseless" in info:
                worst = info.get("val_worst_label")
                val = f", val top-1 {info['val_top1_noiseless']:.2%} noiseless"
                if worst is not None:
                    val += f", {info['val_top1_worst']:.2%} at {worst}"
            self._line(f"{info['phase']} epoch {info['epoch'] + 1}: loss {info['train_loss']:.4f}, "
                       f"train top-1 {info['train_top1']:.2%}{val} ({info['seconds']:.0f} s)")
        elif event == "features":
            how = "computed" if info["built"] else "reused"
            self._line(f"Feature cache: {how} for {info['rows']} images ({info['where']}, {info['build_s']:.1f} s)")
        elif event == "calibrate":  # the preset's step after training (codec.kinds), before the run is saved
            self._stop_bar()
            on = f" on {info['images']} images" if info.get("images") else ""
            self._line(f"calibrating the {info['step']}{on} ...")
        elif event == "interrupted":
            self._stop_bar()
            where = "at its end" if info["batch"] is None else f"after batch {info['batch']}"
            self._line(f"Stopped {where} of {info['phase']} epoch {info['epoch'] + 1}; checkpoint saved in "
                       f"{info['run']}: continue with the same command and --resume")

    def _stop_bar(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.progress is not None:
            self.progress.stop()


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
