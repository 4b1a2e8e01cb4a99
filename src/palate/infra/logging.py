"""Progress bar with tokens/s and ETA, and optional TensorBoard / W&B metric sinks."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("palate")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (not the one at setup): a command run in-process
    under a test runner that swaps stderr, then closes it, must not leave palate logging to a closed file."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger("palate")
    if not root.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s palate %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


class Progress:
    """A tqdm bar over optimizer steps showing loss, tokens/s and ETA (plain log lines if disabled)."""

    def __init__(self, total: int, start: int, enabled: bool = True, desc: str = "train"):
        self.total, self.step = total, start
        self.tokens, self.t0 = 0, time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, tokens: int, **shown: float) -> float:
        """Advance to ``step``; returns the running tokens/s since this process started."""
        self.tokens += tokens
        elapsed = time.perf_counter() - self.t0
        tps = self.tokens / elapsed if elapsed > 0 else 0.0
        text = {k: f"{v:.4g}" for k, v in shown.items()} | {"tok/s": f"{tps:.0f}"}
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix(text, refresh=False)
        else:
            log.info("step %d/%d %s", step, self.total, " ".join(f"{k}={v}" for k, v in text.items()))
        self.step = step
        return tps

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardSink:
    def __init__(self, logdir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(logdir)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, name: str, config: dict):
        import wandb

        self.run = wandb.init(project=project, name=name, config=config)

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def attach_sinks(run, cfg_log, config_dict: dict) -> None:
    """Attach the sinks a config asks for; a missing optional package is a clear error, not a silent no-op."""
    if cfg_log.tensorboard:
        try:
            run.add_sink(TensorBoardSink(str(run.path / "tensorboard")))
        except ImportError as e:
            raise RuntimeError("log.tensorboard=true needs `pip install palate[tensorboard]`") from e
    if cfg_log.wandb:
        try:
            run.add_sink(WandbSink(cfg_log.wandb_project, run.path.name, config_dict))
        except ImportError as e:
            raise RuntimeError("log.wandb=true needs `pip install palate[wandb]`") from e
