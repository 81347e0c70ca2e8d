"""Output folders and files that a fault cannot damage (docs/architecture.md, "Outputs").

- ``prepare_output_dir`` checks ``--output`` before any work: it creates the folder (default mode,
  i.e. the user's umask) and probes that a file can be written there; every failure is one
  ``BdtoolError`` line naming the path and the fix.
- ``write_text_atomic`` / ``copy_file_atomic`` / ``atomic_target`` write a file in full to a
  temporary file in the same folder, then ``os.replace`` it: a reader never sees half a file, and a
  symlink at the destination is replaced (the link itself, never its target).
- ``publish`` copies a summary folder into ``--output`` that way. Existing folders keep their mode:
  ``shutil.copytree(..., dirs_exist_ok=True)`` copies the source's mode onto an existing destination
  (a ``TemporaryDirectory`` is 0700, so ``--output`` used to become 0700); ``publish`` never chmods
  a folder.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bdtool.core.errors import BdtoolError, first_line
from bdtool.core.tracking.checks import write_probe
from bdtool.core.tracking.failures import ArtifactLogError

FILE_MODE = 0o666
"""New files get this mode less the umask (what ``open(path, "w")`` gives)."""


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "a name in it is too long for the file system"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a part of it is a file, not a folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or type(exc).__name__


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder among ``path``'s parents (``afile`` of ``afile/sub``)."""
    for parent in reversed(path.parents):
        try:
            if parent.exists() and not parent.is_dir():
                return parent
        except OSError:  # a name too long, a loop: not a file in the way
            return None
    return None


def prepare_output_dir(path: str | os.PathLike[str], what: str = "--output") -> Path:
    """Create ``path`` (and its parents) with the default mode if missing, check that a file can be
    written in it, and return it. Existing folders are left as they are (mode included)."""
    folder = Path(path).expanduser()
    fix = f"choose another {what}" if what.startswith("--") else "choose another folder"
    try:
        if os.path.lexists(folder) and not folder.is_dir():
            raise BdtoolError(f"{what} {folder}: it is a file, not a folder; {fix}")
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        blocker = _blocking_file(folder)
        if blocker is not None:
            raise BdtoolError(f"{what} {folder}: cannot create it, {blocker} is a file, not a folder; {fix}") from None
        raise BdtoolError(f"{what} {folder}: cannot create it ({_reason(exc)}); {fix}") from None
    try:
        write_probe(folder)
    except OSError as exc:
        raise BdtoolError(f"{what} {folder}: cannot write files there ({_reason(exc)}); "
                          f"make it writable or {fix}") from None
    return folder


@contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix) to write in full; on success it
    replaces ``path`` atomically, on an error it is removed and ``path`` is untouched. The new file
    has the mode of the regular file it replaces, else the default mode (umask). A symlink at
    ``path`` is replaced by the new file; its target is never written."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.stem}.{secrets.token_hex(6)}.tmp{dest.suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.close(fd)
    try:
        yield tmp
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            st = None
        if st is not None and not os.path.islink(dest) and os.path.isfile(dest):
            os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_target``)."""
    with atomic_target(path) as tmp:
        with open(tmp, "w", newline=newline) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def copy_file_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy the bytes of ``src`` to ``dst`` atomically (see ``atomic_target``)."""
    with atomic_target(dst) as tmp:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
    return Path(dst)


def publish(src_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> list[Path]:
    """Copy every file under ``src_dir`` into ``output_dir``, each atomically; missing folders are
    created with the default mode, existing ones keep theirs. A symlink where a folder of the
    summary belongs is refused (files would be written through it). Returns the written paths;
    an OSError becomes one BdtoolError line naming the path."""
    src, out = Path(src_dir), Path(output_dir).expanduser()
    written: list[Path] = []
    try:
        os.makedirs(out, exist_ok=True)
        for root, dirs, files in os.walk(src):
            rel = Path(root).relative_to(src)
            target = out / rel
            if rel.parts:
                if target.is_symlink():
                    raise BdtoolError(f"--output {out}: {target} is a symlink; remove it (bdtool does not write "
                                      "through links in its output folder)")
                os.makedirs(target, exist_ok=True)
            for name in sorted(files):
                written.append(copy_file_atomic(Path(root) / name, target / name))
            dirs.sort()
    except OSError as exc:
        where = exc.filename or out
        raise BdtoolError(f"--output {out}: cannot write {where} ({_reason(exc)}); "
                          "make it writable or choose another --output") from None
    return written


def log_summary_artifacts(local_dir: str | os.PathLike[str], artifact_path: str = "summary") -> None:
    """``mlflow.log_artifacts`` of the comparison's summary into the active run; a failure (an
    unwritable artifact folder, a store that went away) propagates as one ``BdtoolError`` line
    naming the folder, so the run ends FAILED instead of FINISHED without a summary."""
    import mlflow  # heavy: imported on use
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_artifacts(str(local_dir), artifact_path=artifact_path)
    except OSError as exc:
        where = exc.filename or mlflow.get_artifact_uri(artifact_path)
        raise ArtifactLogError(f"cannot log the summary to the artifact folder {where} ({_reason(exc)}); "
                               "make it writable (the comparison is marked FAILED)") from exc
    except MlflowException as exc:
        raise ArtifactLogError(f"cannot log the summary to {mlflow.get_artifact_uri(artifact_path)} ({first_line(exc, None)}); "
                               "check the tracking store (the comparison is marked FAILED)") from exc
