"""The training metrics file, written from Python in the format of arwrap-train's
``--metrics`` (examples/train/metrics.h): JSON Lines, one object per logged step.

    from arwrap_cpp.metrics import MetricsWriter
    with MetricsWriter("run.metrics.jsonl") as m:
        for step in range(1, steps + 1):
            ...
            m.train(step, loss=loss, tokens_per_s=tps, lr=lr, grad_norm=norm, rss_mb=rss_mb())
            if step % 50 == 0:
                m.validation(step, val_loss)

Fields (docs/metrics.md): ``step`` always; ``loss``, ``bits_per_byte``, ``tokens_per_s``,
``lr``, ``grad_norm``, ``rss_mb`` on a logged training step; ``val_loss`` and
``val_bits_per_byte`` where a validation ran; ``wall_s`` (seconds since the run began,
continued across resumes); ``precision`` and ``world_size`` when given. A field not
measured at a step is left out; a non-finite number is written as null.

``bits_per_byte`` is loss / ln 2: bits per token, which is bits per byte for the byte-level
models of the examples. On ``resume_step=S`` the lines with step >= S are dropped first,
then the writer appends. Pass ``enabled=False`` on every rank but 0.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

__all__ = ["MetricsWriter", "read_metrics", "rss_mb"]

_LN2 = math.log(2.0)


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux; 0.0 elsewhere), as arwrap-train reports it."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def _number(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def read_metrics(path) -> list[dict]:
    """The records of a metrics file, in order. Raises ValueError naming the line that is not JSON."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON line ({e.msg}): {line[:80]!r}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError(f"{path}:{i}: a metrics line is an object with an integer 'step': {line[:80]!r}")
            out.append(rec)
    return out


class MetricsWriter:
    """Writes one JSON line per step; the fields of a step are collected until the next step
    begins, flush() or close(). See the module docstring for the fields."""

    def __init__(self, path, *, resume_step: int | None = None, enabled: bool = True,
                 precision: str | None = None, world_size: int | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.precision = precision
        self.world_size = world_size
        self._step = None
        self._fields: dict = {}
        self._wall = 0.0
        self._file = None
        self.kept_lines = 0
        if not enabled:
            return
        if resume_step is not None and (not isinstance(resume_step, int) or resume_step < 0):
            raise ValueError(f"resume_step must be a step number >= 0 or None, got {resume_step!r}")
        kept, offset = [], 0.0
        if resume_step is not None and self.path.exists():
            for rec in read_metrics(self.path):
                if rec["step"] < resume_step:
                    kept.append(json.dumps(rec, allow_nan=False) + "\n")
                    offset = max(offset, float(rec.get("wall_s") or 0.0))
        self.kept_lines = len(kept)
        self._offset = offset
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        self._t0 = time.perf_counter()

    def _field(self, step: int, **values) -> None:
        if not self.enabled:
            return
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if step != self._step:
            self.flush()
            self._step = step
        self._wall = self._offset + time.perf_counter() - self._t0
        self._fields.update({k: _number(v) for k, v in values.items() if v is not None})

    def train(self, step: int, *, loss, tokens_per_s=None, lr=None, grad_norm=None, rss_mb=None) -> None:
        """The training side of a logged step: the mean loss since the previous logged step,
        tokens/s over that interval, this step's learning rate and gradient norm before clipping."""
        loss = float(loss)
        self._field(step, loss=loss, bits_per_byte=loss / _LN2, tokens_per_s=tokens_per_s, lr=lr,
                    grad_norm=grad_norm, rss_mb=rss_mb)

    def validation(self, step: int, loss) -> None:
        loss = float(loss)
        self._field(step, val_loss=loss, val_bits_per_byte=loss / _LN2)

    def flush(self) -> None:
        if self._file is None or self._step is None:
            return
        rec = {"step": self._step, **self._fields, "wall_s": self._wall}
        if self.precision is not None:
            rec["precision"] = self.precision
        if self.world_size is not None:
            rec["world_size"] = int(self.world_size)
        self._file.write(json.dumps(rec, allow_nan=False) + "\n")
        self._file.flush()
        self._step, self._fields = None, {}

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
