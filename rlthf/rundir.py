"""The run directory: atomic writes, durable appends, and the record of finished steps that resume reads."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))


def atomic_write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl_durable(path: str | Path, record: dict) -> None:
    """Append one JSON line and fsync it, so an answer that came back survives a crash right after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _end_with_whole_line(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=_jsonable) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _end_with_whole_line(path: Path) -> None:
    """Make ``path`` end with a newline before an append. A crash mid-append leaves a torn last line, and the
    next record would be glued onto it, making the file unreadable: cut the fragment off (``read_jsonl`` never
    loaded it), or give back the newline to a whole record that lost only that."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":  # the common case costs one byte of reading
            return
        fh.seek(0)
        data = fh.read()
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            fh.truncate(start)
        else:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; a torn last line (a crash mid-append) is ignored, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return out


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunDir:
    """A run's folder and its ``steps.json``: the steps that finished, in order, with their outputs' paths.

    A step is done once ``mark_done`` has written it; its outputs were written atomically before that, so a
    run killed at any point restarts from the last finished step and recomputes nothing that finished.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._steps_path = self.root / "steps.json"
        self._steps: dict[str, dict] = json.loads(self._steps_path.read_text()) if self._steps_path.exists() else {}

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def done(self, step: str) -> bool:
        return step in self._steps

    def info(self, step: str) -> dict:
        return self._steps[step]

    def mark_done(self, step: str, **info: Any) -> None:
        self._steps[step] = info
        atomic_write_json(self._steps_path, self._steps)

    @property
    def steps(self) -> list[str]:
        return list(self._steps)
