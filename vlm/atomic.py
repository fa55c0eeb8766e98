"""Outputs that appear complete or not at all.

A file or folder is written under a temporary name next to its target and renamed into place
only when everything in it has been written; a failure leaves no half-written target
and never touches an existing one.

Temporary names say whose they are: ``.NAME.tmp-HOST-PID-XXXX`` (``.NAME.old-HOST-PID-XXXX`` for
a folder being retired). A process killed mid-write (``kill -9``, power loss) leaves one behind;
the next write of the same target removes those of dead processes on this host, and only those.

A write that fails because the disk is full or the folder is read-only raises
:class:`OutputWriteError` with one line: "no space left on DEVICE writing FILE" or "FOLDER is
read-only", instead of the library's own message (torch's ``[enforce fail at
inline_container.cc]``, safetensors' ``I/O error``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"
_OWNED = re.compile(r"\.(?:tmp|old)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


class OutputWriteError(RuntimeError):
    """An output could not be written (disk full, read-only folder); nothing half-written is left."""


def _owner_prefix(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_staging(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writes of ``target`` left beside it.

    Only names this module makes (``.NAME.tmp-HOST-PID-*`` / ``.NAME.old-HOST-PID-*``), of this host,
    whose process is gone; a write in progress (its process alive) is left alone. Returns what was removed.
    """
    target = Path(target).absolute()
    if not target.parent.is_dir():
        return []
    removed = []
    for path in target.parent.glob(f".{glob_escape(target.name)}.*-*-*-*"):
        match = _OWNED.match(path.name[len(target.name) + 1 :])
        if not match or match["host"] != _HOST or _pid_alive(int(match["pid"])):
            continue
        if path.name.startswith(f".{target.name}.old-") and not target.exists():
            continue  # killed between the two renames of replace_directory: this is the only copy
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _in_target(err: BaseException, staging: Path, target: Path) -> Path:
    """The file a failed write in ``staging`` was writing, named as it would be in ``target`` (else ``target``)."""
    name = getattr(err, "filename", None)
    if isinstance(err, OSError) and name and Path(name).absolute().is_relative_to(staging):
        return target / Path(name).absolute().relative_to(staging)
    return target


_NO_SPACE = re.compile(r"No space left on device|os error 28|Errno 28|Disk quota exceeded|os error 122")
_TORCH_WRITE_FAILED = re.compile(r"file write failed|PytorchStreamWriter failed|enforce fail at inline_container")
_READ_ONLY = re.compile(r"Read-only file system|os error 30|Errno 30|Permission denied|os error 13|Errno 13")


def _folder_is_read_only(folder: Path) -> bool:
    folder = folder if folder.is_dir() else folder.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        probe = tempfile.TemporaryFile(dir=folder)
    except OSError:
        return True
    probe.close()
    return False


def check_output_path(path: str | os.PathLike, kind: str) -> None:
    """Refuse in one line an output ``path`` that cannot be made: a file on the way to it, or a
    ``kind`` ("file" or "folder") that is already the other thing. Call before any work is done."""
    path = Path(path).absolute()
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputWriteError(f"cannot write {path}: {parent} is a file, not a folder; choose another output")
            break
    if kind == "file" and path.is_dir():
        raise OutputWriteError(f"{path} is a folder; give a file name for the output (e.g. {path / 'answers.jsonl'})")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputWriteError(f"{path} is a file; give a folder for the output")


def explain_write_error(err: BaseException, target: Path, writing: Path | None = None) -> OutputWriteError | None:
    """The one-line :class:`OutputWriteError` for a failed write of ``target``, or None if ``err`` is no such failure.

    ``writing`` is the file being written where known (else the error's own file name, else ``target``). A full disk is recognised by errno or by the message safetensors gives
    it; a read-only folder (EROFS, EACCES) by probing the folder. torch's writer loses the errno
    ("file write failed"): that is a full disk when little space is left, else said as it is.
    """
    code = getattr(err, "errno", None)
    text = str(err)
    writing = writing or (Path(err.filename) if isinstance(err, OSError) and err.filename else None) or target
    device = mount_point(target)
    if code in (errno.ENOSPC, errno.EDQUOT) or _NO_SPACE.search(text):
        return OutputWriteError(f"no space left on {device} writing {writing}; free some space and run again")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or _READ_ONLY.search(text) or _TORCH_WRITE_FAILED.search(text):
        if _folder_is_read_only(target.parent):
            return OutputWriteError(f"{target.parent} is read-only; choose an output folder you can write to")
    if _TORCH_WRITE_FAILED.search(text):
        usage = shutil.disk_usage(device)
        if usage.free < max(64 << 20, usage.total // 100):
            return OutputWriteError(f"no space left on {device} writing {writing} ({usage.free >> 20} MiB free); free some space and run again")
        return OutputWriteError(f"could not write {writing} (torch: {text.splitlines()[0][:160]}); {device} has {usage.free >> 20} MiB free")
    return None


@contextlib.contextmanager
def explained_write_errors(target: str | os.PathLike, writing: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a disk-full / read-only failure inside the block into a one-line :class:`OutputWriteError`."""
    target = Path(target).absolute()
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as err:  # not only OSError: torch raises RuntimeError, safetensors its SafetensorError
        explained = explain_write_error(err, target, Path(writing) if writing else None)
        if explained is None:
            raise
        raise explained from err


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike | None) -> Iterator[None]:
    """Remove ``path`` (a partly written folder or file) if the block fails; None: do nothing."""
    try:
        yield
    except BaseException:
        if path is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``target`` when the block succeeds.

    Raises ``FileExistsError`` before any work if ``target`` exists and ``overwrite`` is off.
    With ``overwrite``, the old folder is replaced only after the new one is complete.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another output folder or pass --overwrite")
    with explained_write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=_owner_prefix(target.name), dir=target.parent))
    try:
        try:
            yield staging
        except Exception as err:
            explained = explain_write_error(err, target, _in_target(err, staging, target))
            if explained is None:
                raise
            raise explained from err
        with explained_write_errors(target):
            replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(complete: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder ``complete`` to ``target``, retiring an old ``target`` only after the move."""
    complete, target = Path(complete), Path(target)
    if not target.exists():
        os.replace(complete, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=_owner_prefix(target.name, "old"), dir=target.parent))
    os.replace(target, retired / "old")
    os.replace(complete, target)
    shutil.rmtree(retired)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Yield an open temporary file in ``path``'s folder that replaces ``path`` when the block succeeds.

    Readers (and a crash) never see a half-written file; the rename cannot cross file systems.
    """
    path = Path(path)
    with explained_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path)
        fd, tmp = tempfile.mkstemp(prefix=_owner_prefix(path.name), dir=path.parent)
    try:
        with explained_write_errors(path, writing=path):
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class OutputBusyError(RuntimeError):
    """Another process is writing the same output (it holds the output's lock)."""


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` (a folder, or a file's own lock beside it) for the block.

    A second process that asks for it is refused at once with :class:`OutputBusyError`, before it
    reads or writes anything there. The lock is the kernel's (``filelock``): a killed holder frees it.
    """
    output = Path(output)
    lock_path = output / ".lock" if output.is_dir() else output.parent / f".{output.name}.lock"
    with explained_write_errors(lock_path):
        lock = FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputBusyError(
                f"{output} is being written by another {command} (it holds {lock_path}); wait for it to finish "
                "or choose another output"
            ) from None
    try:
        yield
    finally:
        lock.release()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_file(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as UTF-8 JSON atomically."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=indent)
        handle.write("\n")
