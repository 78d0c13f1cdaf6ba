"""Resumable per-sample work and sharding under ``accelerate launch``.

- :class:`Shard` wraps accelerate's ``PartialState``: under ``accelerate launch``
  (any number of processes, GPUs or machines) each process takes a contiguous
  slice of the sorted sample list (``split_between_processes``); without a
  launcher it is the whole list. ``barrier()`` waits for every process.
- :class:`RowStore` keeps one small JSON file per finished sample, written
  atomically; a killed run loses at most the samples in flight, and a rerun skips
  what is done. The main process merges the rows in sample order, so the merged
  report of N processes equals the single-process one.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence


@dataclass
class Shard:
    index: int
    count: int
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def device(self):
        import torch

        return self.state.device if self.state is not None else torch.device("cpu")

    def split(self, items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if self.count <= 1 or self.state is None:
            return items
        with self.state.split_between_processes(items) as mine:
            return list(mine)

    def barrier(self) -> None:
        if self.count > 1 and self.state is not None:
            self.state.wait_for_everyone()


def get_shard(cpu: bool = False) -> Shard:
    """This process's shard: one process unless launched by ``accelerate launch``
    (or torchrun), in which case accelerate's ``PartialState`` says which.

    ``cpu=True`` (``--device cpu``, or no CUDA/XPU device at all) makes a multi-process
    launch use gloo on the CPU; on a CPU-only machine ``accelerate launch --multi_gpu
    --num_processes N`` (or ``torchrun --nproc_per_node N``) starts the processes
    (accelerate's ``--cpu`` flag alone starts only one)."""
    try:
        import torch
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a core dependency
        return Shard(0, 1, None)
    has_accel = torch.cuda.is_available() or bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    state = PartialState(cpu=cpu or not has_accel)
    return Shard(state.process_index, state.num_processes, state)


def _file_name(key: str) -> str:
    # File-system-safe and one name component ("/" is quoted, a leading "." too, so
    # no key names a hidden file, "." or ".."); reversible unless the key is so long
    # that its tail is replaced by a hash (file names are limited to 255 bytes).
    name = urllib.parse.quote(key, safe="-_.,=+@ ", errors="surrogatepass")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 200:
        name = name[:160] + "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return name + ".json"


class RowStore:
    """One JSON file per sample key under ``folder`` (atomic writes)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / _file_name(key)

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            row = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # unreadable row: recomputed
        return row if isinstance(row, dict) and row.get("key") == key else None

    def put(self, key: str, row: dict[str, Any]) -> Path:
        from ..io import atomic_write_json

        row = dict(row, key=key)
        return atomic_write_json(self.path(key), row)

    def rows(self, keys: Sequence[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for k in keys:
            yield k, self.get(k)


def json_safe(value: Any) -> Any:
    """NaN/inf as strings so the JSON is standard ("nan", "inf", "-inf")."""
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def from_json_number(value: Any) -> float:
    if isinstance(value, str):
        return float(value)  # "nan", "inf"
    return float(value)


def failure_line(failure: dict[str, Any]) -> str:
    """One ``failed:`` line of a run's summary: the sample, then its file and message where
    present (a model error has no file), never an empty field between two colons."""
    from ..io import printable

    parts = (failure.get("sample"), failure.get("file"), failure.get("message"))
    return printable("failed: " + ": ".join(str(v) for v in parts if v not in (None, "")))

