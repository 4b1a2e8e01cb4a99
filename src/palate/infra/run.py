"""One run = one directory.

::

    run_dir/
      config.yaml        the resolved config (a rerun with a different config is refused)
      status.json        running | finished | failed (with the error), with timestamps
      error.log          the traceback of each failure (``palate`` prints one line naming this file)
      metrics.jsonl      one JSON object per logged step (train and eval)
      data_report.json   rows read, skipped and truncated, by reason and row
      checkpoints/       step-XXXXXXXX/ (atomic; newest `keep_last` kept)
      final/             the trained model, loadable with transformers' from_pretrained

Rerunning the same command resumes from the newest checkpoint. A finished run is never overwritten
unless ``overwrite=True``. A recipe decorated with :func:`recorded` marks its run ``failed`` in
``status.json``, with the error, when an exception escapes it; a checkpoint is written after the last
training step, so a rerun after a failure past it (held-out evaluation, normalisation, final save) goes
straight to finishing.

In a multi-process run only the main process writes here; the others open the directory after it
has and read from it (checkpoints to resume), their writes being no-ops.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from palate.config import ConfigError, build, to_dict
from palate.errors import PalateError, keep_traceback_file
from palate.infra import distributed
from palate.infra.checkpoint import list_checkpoints

log = logging.getLogger("palate.run")


class RunExistsError(PalateError, RuntimeError):
    pass


_OPENED: list["RunDir"] = []  # runs opened inside the recipes running now (see recorded)


def recorded(recipe: Callable) -> Callable:
    """Decorate a recipe function: an exception escaping it (Ctrl-C included) marks each run it opened and
    did not finish ``failed`` in ``status.json``, with the error, before the exception goes on."""
    @functools.wraps(recipe)
    def run_recipe(*args, **kwargs):
        mark = len(_OPENED)
        try:
            return recipe(*args, **kwargs)
        except BaseException as e:
            for run in _OPENED[mark:]:
                run.mark_failed(e)
            raise
        finally:
            del _OPENED[mark:]

    return run_recipe


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.metrics_path = self.path / "metrics.jsonl"
        self._sinks: list[Any] = []
        self.writes = distributed.is_main()  # False on the other processes of a multi-process run

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path, config: Any, *, overwrite: bool = False) -> "RunDir":
        """Create the run directory, or reopen it to resume with the identical config.

        Multi-process: the main process does it and every process gets its outcome (the same error, if any)."""
        if distributed.world_size() == 1:
            run = cls._open(path, config, overwrite)
            _OPENED.append(run)
            return run
        error = None
        if distributed.is_main():
            try:
                cls._open(path, config, overwrite)
            except RunExistsError as e:
                error = str(e)
        error = distributed.broadcast(error)
        if error is not None:
            raise RunExistsError(error)
        run = cls(Path(path))
        _OPENED.append(run)
        return run

    @classmethod
    def _open(cls, path: str | Path, config: Any, overwrite: bool) -> "RunDir":
        run = cls(Path(path))
        cfg = to_dict(config)
        if run.path.exists() and any(run.path.iterdir()):
            if overwrite:
                log.warning("overwriting existing run %s", run.path)
                shutil.rmtree(run.path)
            elif run.status().get("state") == "finished":
                raise RunExistsError(
                    f"{run.path} holds a finished run; choose another run_dir or pass --overwrite to replace it"
                )
            elif (run.path / "config.yaml").exists():
                saved = yaml.safe_load((run.path / "config.yaml").read_text())
                try:  # a key added to palate since the run started takes its default: not a changed config
                    saved = to_dict(build(type(config), saved))
                except (ConfigError, TypeError):
                    pass  # a key since removed, or a bad file: compared as written
                # where the run lives is not part of what it computes: a moved or copied run dir resumes
                diff = _diff({**saved, "run_dir": None}, {**cfg, "run_dir": None})
                if diff:
                    raise RunExistsError(
                        f"{run.path} holds an unfinished run with a different config ({'; '.join(diff)}); "
                        "rerun with the same config to resume, or pass --overwrite to start over"
                    )
            else:
                raise RunExistsError(f"{run.path} exists and is not a palate run; choose another run_dir")
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        run._write_status("running")
        return run

    def status(self) -> dict[str, Any]:
        p = self.path / "status.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def _write_status(self, state: str, **extra: Any) -> None:
        if not self.writes:
            return
        status = self.status()
        if state != "failed" and "error" in status:  # resumed after a failure: the error stays as history
            status["last_error"] = status.pop("error")
            for key in ("error_at", "resume"):
                status.pop(key, None)
        status = {**status, "state": state, f"{state}_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        tmp = self.path / ".status.json.tmp"
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.path / "status.json")

    def latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.checkpoints)
        return found[-1] if found else None

    def mark_finished(self, **summary: Any) -> None:
        self._write_status("finished", **summary)

    def mark_failed(self, error: BaseException) -> None:
        """``failed``, with the error and where it was raised, unless the run already finished or failed."""
        if not self.writes or self.status().get("state") != "running":
            return
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
        text = str(error) or ("interrupted" if isinstance(error, KeyboardInterrupt) else "")
        trace = self.path / "error.log"
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')}\n" + "".join(traceback.format_exception(error)))
        keep_traceback_file(error, trace)
        self._write_status("failed", error=f"{type(error).__name__}: {text}", error_at=where, traceback="error.log",
                           resume="rerun the same command to resume from the newest checkpoint")
        log.error("run %s failed: %s: %s (status.json)", self.path, type(error).__name__, text)

    # ------------------------------------------------------------------ metrics

    def add_sink(self, sink: Any) -> None:
        self._sinks.append(sink)

    def rewind_metrics(self, step: int) -> None:
        """Drop metric lines logged after ``step`` (they belong to work the resumed run will redo)."""
        if not self.writes or not self.metrics_path.exists():
            return
        kept = [
            line for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.writes:
            return
        record = {"step": step, **metrics}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self._sinks:
            sink.log(step, metrics)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path / name
        if self.writes:
            p.write_text(json.dumps(data, indent=1))
        return p

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def _diff(saved: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(saved) | set(new)):
            out += _diff(saved.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if saved != new:
        return [f"{prefix.rstrip('.')}: {saved!r} -> {new!r}"]
    return []
