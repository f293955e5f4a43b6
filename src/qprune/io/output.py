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
- OS errors (read-only filesystem, no space left, permission) become a one-line `QpruneError`.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qprune.errors import QpruneError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are not detected there
    fcntl = None

PARTIAL_PREFIX = ".qprune-"
PARTIAL_SUFFIX = ".partial"


class Interrupted(QpruneError):
    """A signal (SIGTERM, SIGHUP) stopped the run; the partial output has been removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


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
                raise QpruneError(f"output {out} exists and is a file; pass force=True (--force) to replace it")
            if _contents(real):
                raise QpruneError(f"output {out} exists and is not empty; pass force=True (--force) to replace it")
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


def _remove_stale_partials(real: Path) -> None:
    """Partial directories left by killed runs: inside OUT (this version, under the lock we hold) and
    beside it (`.NAME.*.partial`, qprune 0.1)."""
    stale = [p for p in real.iterdir() if _is_partial(p)]
    if real.parent.is_dir():
        stale += [p for p in real.parent.glob(f".{real.name}.*.partial") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        warnings.warn(f"removed {len(stale)} partial output(s) left by earlier interrupted runs", stacklevel=4)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Interrupted` (like SIGINT raises KeyboardInterrupt), so the cleanup of
    the enclosing `finally` blocks runs. Signal handlers can only be set from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    signals = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


def _lock(directory_fd: int, out: str | Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(directory_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise QpruneError(f"another qprune run is writing {out}; wait for it to finish or choose another OUT") from None


def _move_into_place(real: Path, tmp: Path, force: bool) -> None:
    if force:
        for entry in _contents(real):
            _remove(entry)
    for entry in tmp.iterdir():
        os.replace(entry, real / entry.name)


@contextmanager
def atomic_output(out: str | Path, force: bool, sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory whose files become OUT's once the block completes without error."""
    sources = list(sources)
    real = check_output(out, force, sources)
    created, done, directory_fd = False, False, None
    try:
        with _signals_interrupt():
            try:
                created = _claim(real, force)
                directory_fd = os.open(real, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                _lock(directory_fd, out)
                _remove_stale_partials(real)
                check_output(out, force, sources)  # again, under the lock: another run may have filled OUT
                tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=real))
            except OSError as error:
                raise _os_error(out, error) from None
            try:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would surprise whoever shares the checkpoint
                yield tmp
                with _signals_deferred():
                    _move_into_place(real, tmp, force)
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
