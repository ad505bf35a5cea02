"""Writing what a user asked for without losing what they had.

Every command that writes a file or a directory goes through here:
- `check_target` refuses, before any work, a target that exists and is not empty (unless the
  user said `--overwrite`), a target that is one of the command's own inputs (the results store,
  a data file, the model: never, even with `--overwrite`), and a file where a directory is
  expected or the other way round;
- `write_text_atomic` and `directory_in_place` write into a temporary sibling with a name of
  their own (process id and a random part: concurrent writers never share one) and rename it
  into place, so a reader sees all of the output or none of it, and of two writers racing for
  one target the second fails cleanly instead of merging its files into the first's;
- `clean_leftovers` removes the temporary siblings a killed writer left behind (its process id
  is in the name; only dead writers' leftovers go).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

WRITING = ".writing"  # the suffix of every temporary sibling
_LEFTOVER = re.compile(r"^\..+\.(\d+)\.[^.]+" + re.escape(WRITING) + r"$")


class OutputError(ValueError):
    """A target the command refuses to write."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def check_target(
    target: str | Path,
    *,
    kind: str,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    what: str = "output",
) -> Path:
    """The target path, expanded, after refusing what would destroy a user's file: an input of
    the command (the same file, or a directory holding or held by an input directory), an
    existing non-empty target without `overwrite`, a directory where a file goes or a file where
    a directory goes. `kind` is "file" or "dir"."""
    path = Path(target).expanduser()
    for source in filter(None, inputs):
        source = Path(cast("str | Path", source)).expanduser()
        clash = (
            _same(path, source)
            or (source.is_dir() and _inside(path, source))
            or (kind == "dir" and _inside(source, path))
        )  # a directory written over holds the input
        if clash:
            raise OutputError(
                f"the {what} {path} is one of this command's inputs ({source}); write it elsewhere "
                "(--overwrite does not apply to inputs)"
            )
    if kind == "file" and path.is_dir():
        raise OutputError(f"the {what} {path} is a directory; name a file")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise OutputError(f"the {what} {path} is a file; name a directory")
    occupied = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if occupied and not overwrite:
        raise OutputError(
            f"the {what} {path} exists{'' if kind == 'file' else ' and is not empty'}; "
            "choose another path or pass --overwrite"
        )
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sibling_prefix(path: Path) -> str:
    """The start of a temporary sibling's name: `.NAME.PID.` (`clean_leftovers` reads the PID)."""
    return f".{path.name}.{os.getpid()}."


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a uniquely named temporary sibling renamed into place."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path.parent)
    handle, tmp = tempfile.mkstemp(prefix=sibling_prefix(path), suffix=WRITING, dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def directory_in_place(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A fresh, uniquely named temporary directory beside `out` to fill; on success it becomes
    `out`. `out` must then be absent or empty, unless `overwrite` (its old content is removed
    only after the new one is in place, and put back if it cannot be). If another writer filled `out` meanwhile, this one
    fails (OutputError) and its files are removed: nothing is merged."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=sibling_prefix(out), suffix=WRITING, dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); `out` gets the usual mode
    old = None  # the overwritten output, kept until the new one is in place
    try:
        yield tmp
        if overwrite and out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=sibling_prefix(out), suffix=WRITING, dir=out.parent))
            os.rename(out, old / "replaced")
        try:
            os.rename(tmp, out)  # an empty directory at `out` is replaced; a non-empty one refuses
        except OSError as err:
            if old is not None and not out.exists():
                os.rename(old / "replaced", out)  # the user's old output comes back
                old = None
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise OutputError(
                    f"the output {out} was written by another process meanwhile; nothing of this run was merged into it"
                ) from err
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one that is not ours counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(directory: str | Path) -> list[Path]:
    """Remove the temporary siblings in `directory` whose writer process is gone; what was
    removed."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
