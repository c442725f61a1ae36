"""One run's session: which process writes, the run directory and its identity, resume, the log file.

* **Processes.** Under ``accelerate launch`` every process runs ``vlmplug train``; the main process
  alone creates the run directory and writes outputs, and the others learn the directory from it.
* **Identity.** ``run.json`` in the run directory records the run's id, recipe and status
  (``running`` / ``interrupted`` / ``failed`` / ``finished``). ``resume_from_checkpoint: last``
  without ``--output-dir`` resumes the one unfinished run of the same recipe that has a checkpoint
  -- never a finished run, never a guess between several; every problem is reported before any
  model loads.
* **One log file.** ``train.log`` holds JSON lines: the run's messages, the Trainer's logged values
  (``step``, ``loss``, ...) and library warnings, which stay off the console.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmplug._version import __version__
from vlmplug.errors import ConfigError

from .trainer import CHECKPOINT_STATE, complete_checkpoints

__all__ = ["Session", "open_session", "plan_run_dir", "RUN_FILE", "LOG_FILE", "read_run_file"]

RUN_FILE = "run.json"
LOG_FILE = "train.log"
CHECKPOINTS = "checkpoints"
log = logging.getLogger("vlmplug")
LIBRARY_LOGGERS = ("py.warnings", "transformers", "accelerate", "peft", "datasets", "torch")


def read_run_file(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _error(message: str) -> ConfigError:
    return ConfigError(message, header="output directory")


def _check_writable(path: Path, explicit: bool) -> None:
    what = "--output-dir" if explicit else "run directory"
    if path.exists() and not path.is_dir():
        raise _error(f"{what} {path} is a file; choose a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise _error(f"{what} {path} cannot be created: {probe} is a file; choose another directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _error(f"{what} {path} is not writable ({probe} does not allow writing); choose another directory")


def _checkpoint_problem(ckpt: Path) -> str | None:
    if not ckpt.is_dir():
        return f"{ckpt} does not exist"
    if not (ckpt / "trainer_state.json").is_file():
        return f"{ckpt} is not a training checkpoint (no trainer_state.json)"
    if not (ckpt / CHECKPOINT_STATE).is_file():
        return f"{ckpt} was not written completely (interrupted while saving); use an earlier checkpoint"
    return None


def _resume_explicit(resume: str, explicit: str | None) -> tuple[Path, Path]:
    ckpt = Path(resume)
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise _error(
            f"resume_from_checkpoint: {problem}; give a checkpoint-N folder of a run, or 'last' "
            f"with --output-dir RUN_DIR"
        )
    if explicit:
        return Path(explicit), ckpt
    run_dir = ckpt.parent.parent
    if ckpt.parent.name != CHECKPOINTS or read_run_file(run_dir) is None:
        raise _error(f"resume_from_checkpoint: {ckpt} is not inside a vlmplug run directory; add --output-dir RUN_DIR")
    return run_dir, ckpt


def _last_checkpoint(run_dir: Path) -> Path:
    if read_run_file(run_dir) is None:
        raise _error(f"resume_from_checkpoint: last: {run_dir} is not a vlmplug run directory (no {RUN_FILE})")
    found = complete_checkpoints(run_dir / CHECKPOINTS)
    if not found:
        raise _error(
            f"resume_from_checkpoint: last: {run_dir} has no complete checkpoint; it saved none "
            f"(set save_strategy: steps and save_steps) or was interrupted before the first"
        )
    return found[-1]


def _resume_last(name: str, explicit: str | None) -> tuple[Path, Path]:
    if explicit:
        return Path(explicit), _last_checkpoint(Path(explicit))
    runs = Path("runs")
    candidates = []
    for d in sorted(runs.glob(f"{name}*")) if runs.is_dir() else []:
        info = read_run_file(d)
        if (
            d.is_dir()
            and info
            and info.get("recipe") == name
            and info.get("status") != "finished"
            and complete_checkpoints(d / CHECKPOINTS)
        ):
            candidates.append(d)
    if not candidates:
        raise _error(
            f"resume_from_checkpoint: last: no unfinished run of recipe '{name}' with a checkpoint "
            f"under {runs}/; give the run with --output-dir RUN_DIR (finished runs are resumed only "
            f"when named)"
        )
    if len(candidates) > 1:
        raise _error(
            f"resume_from_checkpoint: last: {len(candidates)} unfinished runs of recipe '{name}' "
            f"({', '.join(map(str, candidates))}); choose one with --output-dir RUN_DIR"
        )
    return candidates[0], _last_checkpoint(candidates[0])


def plan_run_dir(recipe: Any, output_dir: str | None) -> tuple[Path, Path | None]:
    """``(run directory, checkpoint to resume or None)``; every problem is raised here, before
    anything loads."""
    explicit = output_dir or recipe.core.get("output_dir")
    resume = recipe.core.get("resume_from_checkpoint")
    if resume and resume != "last":
        run_dir, ckpt = _resume_explicit(str(resume), explicit)
    elif resume == "last":
        run_dir, ckpt = _resume_last(recipe.name, explicit)
    elif explicit:
        run_dir, ckpt = Path(explicit), None
        if run_dir.is_dir() and any(run_dir.iterdir()) and not recipe.core["overwrite_output_dir"]:
            raise _error(
                f"output_dir {run_dir} is not empty; choose another, set overwrite_output_dir: true, or "
                f"resume it with --set resume_from_checkpoint=last"
            )
    else:
        base = Path("runs") / recipe.name
        run_dir, n, ckpt = base, 1, None
        while run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
    _check_writable(run_dir, bool(explicit))
    return run_dir, ckpt


@dataclass
class Session:
    """The process's place in the run: directory, main or not, world size, resume point, console."""

    run_dir: Path
    resume: Path | None
    console: Any
    is_main: bool = True
    world_size: int = 1
    state: Any = None  # accelerate's PartialState when launched with several processes
    info: dict[str, Any] = field(default_factory=dict)
    _restore: list[Any] = field(default_factory=list)

    def say(self, message: str) -> None:
        """Print on the main process and log it."""
        from rich.text import Text

        if self.is_main:
            self.console.print(message, highlight=False)
        log.info(Text.from_markup(message).plain)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. tokenising and caching); the others wait."""
        if self.state is None:
            yield
        else:
            with self.state.main_process_first():
                yield

    def mark(self, status: str, **extra: Any) -> None:
        """Record the run's status in ``run.json`` (main process)."""
        if not self.is_main:
            return
        self.info.update(status=status, updated=_now(), **extra)
        (self.run_dir / RUN_FILE).write_text(json.dumps(self.info, indent=2, default=str))

    def close(self) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()
        if self.state is not None:
            _end_process_group(self.state)


def _end_process_group(state: Any) -> None:
    """Wait for every process, then take the process group down (the run has already dropped its
    DDP wrapper: destroying the group while a DDP reducer is alive can hang at exit)."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        state.wait_for_everyone()
        dist.destroy_process_group()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _distributed() -> Any:
    """accelerate's PartialState when this process is one of several (``accelerate launch``), else
    ``None``. On CPU it must be told so (``ACCELERATE_USE_CPU``), or every rank believes it is alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _broadcast(state: Any, value: Any) -> Any:
    if state is None:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def open_session(recipe: Any, output_dir: str | None, console: Any, argv: list[str] | None = None) -> Session:
    """Decide the run directory (main process), share it, create it and start the log."""
    from rich.console import Console

    state = _distributed()
    is_main = state is None or state.is_main_process
    planned: Any = None
    if is_main:
        try:
            planned = plan_run_dir(recipe, output_dir)
        except ConfigError as e:
            planned = e
    planned = _broadcast(state, planned)
    if isinstance(planned, ConfigError):
        raise planned
    run_dir, resume = planned
    session = Session(
        run_dir=Path(run_dir),
        resume=Path(resume) if resume else None,
        console=console if is_main else Console(quiet=True),
        is_main=is_main,
        world_size=state.num_processes if state is not None else 1,
        state=state,
    )
    if is_main:
        session.run_dir.mkdir(parents=True, exist_ok=True)
        earlier = read_run_file(session.run_dir) if resume else None
        session.info = {
            **(earlier or {}),
            "id": (earlier or {}).get("id") or uuid.uuid4().hex,
            "recipe": recipe.name,
            "source": recipe.source,
            "vlmplug_version": __version__,
            "created": (earlier or {}).get("created") or _now(),
            "command": argv or sys.argv,
        }
        session.mark("running", world_size=session.world_size)
        _start_log(session)
    session.wait()
    return session


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created).isoformat(timespec="seconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        data = getattr(record, "vlmplug", None)
        if isinstance(data, dict):
            entry.update(data)
        else:
            entry["message"] = record.getMessage()
        return json.dumps(entry, default=str)


def _start_log(session: Session) -> None:
    """``train.log`` (JSON lines) gets the run's messages and the libraries' warnings; the libraries'
    own console handlers are muted for the run and restored after it."""
    handler = logging.FileHandler(session.run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(_JsonLines())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    caught = warnings.catch_warnings()  # restores the filters and showwarning afterwards
    caught.__enter__()
    logging.captureWarnings(True)
    saved = []
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        saved.append((lib, list(lib.handlers), lib.propagate))
        lib.handlers = [handler]
        lib.propagate = False
    warnings.simplefilter("default")  # each distinct warning once per location, into the log

    def undo() -> None:
        log.removeHandler(handler)
        for lib, handlers, propagate in saved:
            lib.handlers, lib.propagate = handlers, propagate
        logging.captureWarnings(False)
        caught.__exit__(None, None, None)
        handler.close()

    session._restore.append(undo)
