"""Writing a set of files into a directory all at once, or not at all.

``save_pretrained`` must never lose the checkpoint already in its target directory: an
exception, a full disk or Ctrl-C in the middle of a save leaves the previous checkpoint
in place and readable. How:

1. Every file is written and fsynced in a staging directory beside the target (same
   filesystem, so the moves below are renames, not copies).
2. A target that does not exist yet: the staging directory is renamed to it, so the
   checkpoint appears complete or not at all, even on a power cut.
3. A target that exists (it may hold other files too: a Trainer's ``optimizer.pt``, a
   hand-written ``README.md``): each previous file is hard-linked into a backup folder in
   the staging directory, then replaced with ``os.replace``, in the order given. If any
   step raises (``OSError``, ``KeyboardInterrupt`` ...), the files already replaced are
   put back before the exception propagates. Only the death of the process (or a power
   cut) during these few renames can leave a mix of new and previous files; the staging
   directory then stays behind, its ``previous/`` folder holding the previous files and
   the rest the new files not moved yet, and the checkpoint's own checksums make the mix
   fail to load rather than load wrongly.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import RPGCheckpointError, RPGError

STAGING_MARK = ".rpg-tmp-"
BACKUP_DIR = "previous"


def staging_prefix(target: Path) -> str:
    """Name prefix of the staging directories of ``target`` (hidden, beside it)."""
    return f".{target.name}{STAGING_MARK}"


def leftover_staging_dirs(target: Path) -> list[Path]:
    """Staging directories that an interrupted save of ``target`` left beside it."""
    prefix = staging_prefix(target)
    try:
        return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
    except OSError:
        return []


def _make_staging_dir(target: Path) -> Path:
    # Not tempfile.mkdtemp: its 0o700 mode would stick to a new checkpoint directory
    # renamed into place; os.mkdir applies the user's umask like any other directory.
    for _ in range(100):
        path = target.parent / f"{staging_prefix(target)}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RPGCheckpointError(f"could not create a staging directory beside {str(target)!r}")


def fsync_file(path: Path) -> None:
    """Flush ``path`` to disk, so that a rename after it never exposes an empty file."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames) to disk, where the platform allows it."""
    if os.name == "nt":  # directories cannot be opened on Windows; NTFS journals renames
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # no hard links on this filesystem
        shutil.copy2(source, dest)


def _restore(target: Path, staging: Path, moved: list[tuple[str, bool]]) -> list[str]:
    """Undo the replacements in ``moved``; return what could not be undone."""
    failures = []
    backup = staging / BACKUP_DIR
    for name, existed in reversed(moved):
        if os.path.lexists(staging / name):  # interrupted before this one moved
            continue
        try:
            if existed:
                os.replace(backup / name, target / name)
            else:
                os.unlink(target / name)
        except OSError as err:
            failures.append(f"{name}: {err}")
    return failures


class _Mixed(RPGCheckpointError):
    """The previous files could not all be restored; the staging directory must be kept."""


def _replace_each(staging: Path, target: Path, names: Sequence[str]) -> None:
    backup = staging / BACKUP_DIR
    backup.mkdir()
    moved: list[tuple[str, bool]] = []
    try:
        for name in names:
            dest = target / name
            existed = os.path.lexists(dest)
            if existed:
                _link_or_copy(dest, backup / name)
            moved.append((name, existed))  # before the move: an interrupt right after it is undone too
            os.replace(staging / name, dest)
        fsync_dir(target)
    except BaseException as err:
        failures = _restore(target, staging, moved)
        if failures:
            raise _Mixed(
                f"saving into {str(target)!r} failed ({err!r}) and restoring the previous files failed too "
                f"({'; '.join(failures)}). The previous files are in {str(backup)!r}: move them back into "
                f"{str(target)!r} to get the previous checkpoint. The new files not moved yet are in {str(staging)!r}."
            ) from err
        raise


def _commit(staging: Path, target: Path, names: Sequence[str]) -> bool:
    """Move ``names`` from ``staging`` into ``target``; True when ``staging`` became ``target``."""
    if not os.path.lexists(target):
        fsync_dir(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a race with another writer creating it: a real failure
                raise
        else:
            fsync_dir(target.parent)
            return True
    _replace_each(staging, target, names)
    return False


def write_directory_atomically(target: Path, write: Callable[[Path], Sequence[str]]) -> None:
    """Write files into ``target`` all at once or not at all (see the module docstring).

    ``write(staging)`` writes the files into the empty directory ``staging`` and returns
    their names, in the order they must replace the previous ones (the file that vouches
    for the others last). Other files in ``target`` are left alone.

    Raises:
        RPGCheckpointError: On an ``OSError`` (disk full, permissions ...), saying what
            state ``target`` is in. Other exceptions propagate unchanged. Either way
            ``target`` holds exactly what it held before, unless the message says otherwise.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _make_staging_dir(target)
    except OSError as err:
        raise RPGCheckpointError(f"could not save into {str(target)!r}: {err}; nothing was written there") from err
    keep_staging = False
    existed = target.exists()
    try:
        names = list(write(staging))
        for name in names:
            fsync_file(staging / name)
        if _commit(staging, target, names):
            return
    except _Mixed:
        keep_staging = True
        raise
    except RPGError:
        raise
    except OSError as err:
        state = "the previous checkpoint there is unchanged" if existed else "nothing was written there"
        raise RPGCheckpointError(f"could not save into {str(target)!r}: {err}; {state}") from err
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)


__all__ = ["STAGING_MARK", "fsync_dir", "fsync_file", "leftover_staging_dirs", "write_directory_atomically"]
