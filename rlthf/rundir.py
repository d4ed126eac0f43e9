"""The run directory: atomic writes, durable appends, and the record of finished steps that resume reads."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

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
    with replace_when_done(path) as tmp:
        df.to_parquet(tmp, index=False)


@contextmanager
def replace_when_done(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends without an error
    (and is removed when it raises), so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names a place on a remote filesystem (``s3://``, ``gs://``...), not a local path."""
    return "://" in str(location)


def filesystem_and_path(location: str | Path):
    """The pyarrow filesystem of a local path or a URI, and the path within it."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(str(location) if is_uri(location) else str(Path(location).resolve()))


def join_location(location: str | Path, *parts: str) -> str:
    """``parts`` under a local path or a URI (``pathlib`` would fold a URI's ``//``)."""
    return "/".join([str(location).rstrip("/"), *parts]) if is_uri(location) else str(Path(location).joinpath(*parts))


def write_parquet_part(directory: str | Path, table) -> str:
    """A new part ``part-<uuid>.parquet`` of a folder of Parquet parts (``directory``: a path or a URI) holding
    ``table`` (Arrow or pandas), written whole or not at all (a crash loses at most this one): beside it and
    renamed on a local disk, in one upload on an object store. Returns its location."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    location = join_location(directory, f"part-{uuid.uuid4().hex}.parquet")
    if is_uri(location):
        filesystem, path = filesystem_and_path(location)
        pq.write_table(table, path, filesystem=filesystem)
    else:
        with replace_when_done(location) as tmp:
            pq.write_table(table, tmp)
    return location


def parquet_parts(directory: str | Path) -> tuple[Any, list[str]]:
    """The pyarrow filesystem of ``directory`` (a path or a URI) and the paths on it of its finished parts
    (``part-*.parquet``, sorted; a part being written is a hidden temporary file)."""
    from pyarrow import fs

    filesystem, path = filesystem_and_path(directory)
    found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return filesystem, sorted(f.path for f in found if f.type == fs.FileType.File and f.base_name.startswith("part-")
                              and f.extension == "parquet")


@contextmanager
def replace_dir_when_done(path: str | Path) -> Iterator[Path | str]:
    """:func:`replace_when_done` for a folder: ``<path>.partial`` to write into (emptied first: a crash mid-write
    leaves it behind), which replaces ``path`` when the block ends without an error. On a remote filesystem,
    which cannot rename a folder, the folder itself, emptied first: there the caller's own record of the step
    (``steps.json``) says when it is whole."""
    if is_uri(path):
        filesystem, inside = filesystem_and_path(path)
        filesystem.delete_dir_contents(inside, missing_dir_ok=True)
        yield str(path)
        return
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


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


class Mirror:
    """A copy of the run directory on any pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://`` or a local path).

    The run itself works in a local folder (atomic renames and fsync need one); after every finished step the
    files that changed since the last push go up, ``steps.json`` last, so the mirror never records a step whose
    outputs it lacks. A driver on a fresh node pulls the mirror before it starts and resumes from there.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri if is_uri(uri) else str(Path(uri).resolve())
        self.filesystem, self.path = filesystem_and_path(uri)
        self._pushed: dict[str, tuple[int, int]] = {}

    def _exists(self, relpath: str) -> bool:
        from pyarrow import fs

        return self.filesystem.get_file_info(f"{self.path}/{relpath}").type != fs.FileType.NotFound

    def pull(self, root: Path) -> bool:
        """Copy the mirror into ``root`` when ``root`` has no run yet; True when there was a run to pull."""
        from pyarrow import fs

        if (root / "steps.json").exists() or not self._exists("steps.json"):
            return False
        fs.copy_files(self.path, str(root), source_filesystem=self.filesystem,
                      destination_filesystem=fs.LocalFileSystem())
        self._pushed = self._local_files(root)  # what came down need not go up again
        return True

    def push(self, root: Path) -> None:
        from pyarrow import fs

        current = self._local_files(root)
        changed = [rel for rel, stamp in current.items() if self._pushed.get(rel) != stamp]
        changed.sort(key=lambda rel: rel == "steps.json")
        for rel in changed:
            self.push_file(root, rel, current[rel])

    def push_file(self, root: Path, rel: str, stamp: tuple[int, int] | None = None) -> None:
        """Copy one file of the run (``rel``, relative to ``root``) up now."""
        from pyarrow import fs

        target = f"{self.path}/{rel}"
        self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        fs.copy_files(str(root / rel), target, source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=self.filesystem)
        stat = (root / rel).stat()
        self._pushed[rel] = stamp or (stat.st_size, stat.st_mtime_ns)

    @staticmethod
    def _local_files(root: Path) -> dict[str, tuple[int, int]]:
        files = {}
        for path in root.rglob("*"):
            if path.is_file() and not path.name.endswith(".tmp"):  # an atomic write in flight is not a file yet
                stat = path.stat()
                files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return files


class RunDir:
    """A run's folder and its ``steps.json``: the steps that finished, in order, with their outputs' paths.

    A step is done once ``mark_done`` has written it; its outputs were written atomically before that, so a
    run killed at any point restarts from the last finished step and recomputes nothing that finished.
    ``mirror``: also keep a copy on a storage path (:class:`Mirror`), pulled before the run and pushed after
    every step.
    """

    def __init__(self, root: str | Path, mirror: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.mirror = Mirror(mirror) if mirror else None
        if self.mirror:
            self.mirror.pull(self.root)
        self._steps_path = self.root / "steps.json"
        self._steps: dict[str, dict] = json.loads(self._steps_path.read_text()) if self._steps_path.exists() else {}

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def shared(self, *parts: str) -> str:
        """Where Ray's workers (on any node) read or write the run's file or folder ``parts``: in the mirror when
        the run has one (``storage_path``), else in the run directory."""
        return join_location(self.mirror.uri, *parts) if self.mirror else str(self.path(*parts))

    def share(self, *parts: str) -> str:
        """:meth:`shared` of a file this process has just written in the run directory: copied up to the
        mirror now, for a reader within the same step (the mirror gets the rest when the step finishes)."""
        if self.mirror:
            self.mirror.push_file(self.root, Path(*parts).as_posix())
        return self.shared(*parts)

    def done(self, step: str) -> bool:
        return step in self._steps

    def info(self, step: str) -> dict:
        return self._steps[step]

    def mark_done(self, step: str, **info: Any) -> None:
        self._steps[step] = info
        self._save_steps()

    def forget(self, *steps: str) -> None:
        """Mark ``steps`` not done, so that the next run computes them again (their outputs stay until then)."""
        for step in steps:
            self._steps.pop(step, None)
        self._save_steps()

    def _save_steps(self) -> None:
        atomic_write_json(self._steps_path, self._steps)
        if self.mirror:
            self.mirror.push(self.root)

    @property
    def steps(self) -> list[str]:
        return list(self._steps)
