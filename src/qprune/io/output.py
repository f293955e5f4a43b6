"""Writing an output directory safely: all or nothing, one writer at a time, never over the source.

    with atomic_output(out, force, sources=[src_dir, *shard_files]) as tmp:
        ...write every file into tmp...
    # OUT now holds exactly what was written to tmp; on any error or signal, OUT is as it was

How:
- OUT is resolved (symlinks followed) and refused when it is, contains or lies inside one of the
  `sources`: `--force` empties OUT, and must never be able to delete what qprune reads.
- OUT is claimed before anything is written: created if absent (an existing empty directory is written
  into, not renamed, so a mount point or container volume works), and locked with `flock` for the whole
  run, so a second run to the same OUT fails at once instead of silently replacing the first.
- Files are written into a hidden `.qprune-*.partial` directory inside OUT (same filesystem, so the
  final moves are renames) and moved up only when the block completes. A failure, SIGINT, SIGTERM or
  SIGHUP removes it, and OUT too if this run created it. A SIGKILL cannot be caught: the next run to
  that OUT finds the dead run's partial directory (its lock died with it) and removes it.
- Replacing a non-empty OUT (`force`) is atomic for readers: the new directory is built complete
  beside OUT (`.NAME.qprune-*.partial`) and swapped with OUT in one step (Linux `renameat2` with
  RENAME_EXCHANGE; elsewhere OUT is renamed aside and the new one renamed in, which leaves at worst a
  moment with no OUT, never one run's config.json with another's weights); then the old is removed.
  Where that cannot be done (a mount point, an OUT whose parent we may not write) the entries are
  replaced one by one inside OUT, as for an empty OUT.
- OS errors (read-only filesystem, no space left, permission) become a one-line `QpruneError`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qprune.errors import QpruneError, signals_interrupt

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are not detected there
    fcntl = None

PARTIAL_PREFIX = ".qprune-"
PARTIAL_SUFFIX = ".partial"


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _is_partial(path: Path) -> bool:
    return path.name.startswith(PARTIAL_PREFIX) and path.name.endswith(PARTIAL_SUFFIX) and path.is_dir()


def _contents(directory: Path) -> list[Path]:
    """What a directory holds, not counting the partial directories of qprune runs."""
    return [entry for entry in directory.iterdir() if not _is_partial(entry)]


def _check_sources(out: Path, real: Path, sources: Iterable[str | Path]) -> None:
    for source in sources:
        if not os.path.exists(source):  # a hub id, not a directory here
            continue
        src = _real(source)
        if src == real:
            raise QpruneError(f"the output directory is the source ({source}); choose another OUT")
        if src.is_relative_to(real):
            raise QpruneError(f"the output directory {out} contains the source {source}; choose another OUT")
        if real.is_relative_to(src):
            raise QpruneError(f"the output directory {out} is inside the source {source}; choose another OUT")


def check_output(out: str | Path, force: bool, sources: Iterable[str | Path] = ()) -> Path:
    """Refuse an OUT that overlaps a source, or that exists and is not empty unless `force`; return OUT
    with its symlinks resolved. Cheap: call it before any work, and `atomic_output` checks again."""
    real = _real(out)
    _check_sources(Path(out), real, sources)
    try:
        if real.exists() and not force:
            if not real.is_dir():
                raise QpruneError(f"output {out} exists and is a file; use {{force}} to replace it")
            if _contents(real):
                raise QpruneError(f"output {out} exists and is not empty; use {{force}} to replace it")
    except OSError as error:
        raise _os_error(out, error) from None
    return real


def _os_error(out: str | Path, error: OSError) -> QpruneError:
    reason = error.strerror or str(error)
    return QpruneError(f"cannot write {out}: {reason}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sibling_partial(real: Path) -> re.Pattern:
    """Names of partial directories beside OUT: a replacement being built, or the old OUT being removed
    (`.NAME.qprune-*.partial`), and qprune 0.1's (`.NAME.*.partial`). The random part has no dot, so
    another OUT's (`.NAME.x.qprune-*.partial` for an OUT named NAME.x) never matches."""
    return re.compile(rf"\.{re.escape(real.name)}\.(?:qprune-)?[A-Za-z0-9_]+\.partial")


def _remove_stale_partials(real: Path) -> None:
    """Partial directories left by killed runs: inside OUT and beside it (under the lock we hold)."""
    stale = [p for p in real.iterdir() if _is_partial(p)]
    if real.parent.is_dir():
        pattern = _sibling_partial(real)
        stale += [p for p in real.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        warnings.warn(f"removed {len(stale)} partial output(s) left by earlier interrupted runs", stacklevel=4)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold signals back while the finished output is moved into place (a few renames)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    masked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, masked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _claim(real: Path, force: bool) -> bool:
    """Make OUT an existing directory; True when this run created it."""
    if real.is_symlink() or (real.exists() and not real.is_dir()):  # a file (force was checked) or a dangling link
        real.unlink()
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        real.mkdir()
        return True
    except FileExistsError:
        return False


def _lock(directory_fd: int, real: Path, out: str | Path) -> None:
    busy = f"another qprune run is writing {out}; wait for it to finish or choose another OUT"
    if fcntl is None:
        return
    try:
        fcntl.flock(directory_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise QpruneError(busy) from None
    held, now = os.fstat(directory_fd), os.stat(real)
    if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):  # another run swapped in a new OUT meanwhile
        raise QpruneError(busy)


def _move_into_place(real: Path, tmp: Path, force: bool) -> None:
    """Entry by entry, inside OUT: for an empty OUT, or where OUT cannot be swapped."""
    if force:
        for entry in _contents(real):
            _remove(entry)
    for entry in tmp.iterdir():
        os.replace(entry, real / entry.name)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    """glibc's renameat2, or None (not Linux, an old glibc, no ctypes)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step; False where the system or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _swap_into_place(real: Path, new: Path) -> None:
    """Make the complete directory `new` (beside OUT) OUT, in one step for readers; the old OUT ends at
    `new`'s path, for the caller to remove."""
    if _exchange(new, real):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{real.name}.qprune-", suffix=PARTIAL_SUFFIX, dir=real.parent))
    os.replace(real, aside)  # onto the empty directory just made: the name is ours
    try:
        os.replace(new, real)
    except OSError:
        os.replace(aside, real)  # put the old OUT back
        raise
    os.replace(aside, new)


def _replacement_dir(real: Path, force: bool) -> Path | None:
    """Where to build a replacement for a non-empty OUT, beside it, so that it can be swapped in at once;
    None when it is to be written inside OUT (OUT empty, a mount point, a parent we may not write)."""
    if not force or not _contents(real) or os.path.ismount(real):
        return None
    try:
        new = Path(tempfile.mkdtemp(prefix=f".{real.name}.qprune-", suffix=PARTIAL_SUFFIX, dir=real.parent))
    except OSError:
        return None
    try:
        os.chmod(new, stat.S_IMODE(os.stat(real).st_mode))  # as OUT was: its sharing is the user's choice
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        return None
    return new


@contextmanager
def atomic_output(out: str | Path, force: bool, sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory whose files become OUT's once the block completes without error."""
    sources = list(sources)
    real = check_output(out, force, sources)
    created, done, directory_fd = False, False, None
    try:
        with signals_interrupt():
            try:
                created = _claim(real, force)
                directory_fd = os.open(real, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                _lock(directory_fd, real, out)
                _remove_stale_partials(real)
                check_output(out, force, sources)  # again, under the lock: another run may have filled OUT
                replacement = _replacement_dir(real, force)
                tmp = replacement or Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=real))
            except OSError as error:
                raise _os_error(out, error) from None
            try:
                if replacement is None:
                    umask = os.umask(0)
                    os.umask(umask)
                    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would surprise whoever shares the checkpoint
                yield tmp
                with _signals_deferred():
                    if replacement is None:
                        _move_into_place(real, tmp, force)
                    else:
                        _swap_into_place(real, tmp)  # the old OUT is now at tmp, removed below
                    done = True
            except OSError as error:
                raise _os_error(out, error) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if created and not done:
            shutil.rmtree(real, ignore_errors=True)  # holds nothing of anyone's: this run made it
        raise
    finally:
        if directory_fd is not None:
            os.close(directory_fd)
