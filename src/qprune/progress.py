"""Progress for long-running work, on stderr: what is happening and roughly how long it will take.

    progress = Progress(enabled=not quiet)
    progress.note("dtype: float32 (the CPU has no native bfloat16)")
    for batch in progress(batches, "greedy step 2 of 4"):
        ...

On a terminal each loop is a tqdm bar (with its ETA). Elsewhere (a log file, CI, a pipe) a bar would
be one endless carriage-return line, so the loop prints a plain line every `PLAIN_INTERVAL` seconds
instead: "greedy step 2 of 4: 10/22 (45%), 12s elapsed, about 14s left". Disabled, it prints nothing;
`quiet_library_bars()` also silences transformers' and the hub's own bars. A `Progress` is falsy
when disabled, so code can write `progress(items, "...") if progress else items`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")
PLAIN_INTERVAL = 10.0  # seconds between plain progress lines


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Loops and notes reported on `stream` (stderr): bars on a terminal, periodic lines elsewhere."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream

    @property
    def _stream(self) -> TextIO:
        return self.stream or sys.stderr  # looked up late: test runners swap sys.stderr

    def __bool__(self) -> bool:
        return self.enabled

    @property
    def on_terminal(self) -> bool:
        return self.enabled and hasattr(self._stream, "isatty") and self._stream.isatty()

    def note(self, message: str) -> None:
        """One line about what is happening (or was chosen), unless disabled."""
        if self.enabled:
            print(message, file=self._stream, flush=True)

    def __call__(self, iterable: Iterable[T], description: str) -> Iterable[T]:
        if not self.enabled:
            return iterable
        if self.on_terminal:
            from tqdm.auto import tqdm

            return tqdm(iterable, desc=description, leave=False, file=self._stream)
        return self._plain(iterable, description)

    def _plain(self, iterable: Iterable[T], description: str) -> Iterator[T]:
        total = len(iterable) if hasattr(iterable, "__len__") else None
        start = last = time.monotonic()
        done = 0
        for item in iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= PLAIN_INTERVAL and done != total:
                last = now
                self.note(self._line(description, done, total, now - start))
        if last != start:  # the loop was long enough to report on: say that it ended
            self.note(f"{description}: done, {done} in {_duration(time.monotonic() - start)}")

    @staticmethod
    def _line(description: str, done: int, total: int | None, elapsed: float) -> str:
        if total is None:
            return f"{description}: {done} done, {_duration(elapsed)} elapsed"
        left = elapsed / done * (total - done)
        return (
            f"{description}: {done}/{total} ({done / total:.0%}), {_duration(elapsed)} elapsed, "
            f"about {_duration(left)} left"
        )


def as_progress(progress: bool | Progress) -> Progress:
    """A `Progress` from what a library caller passed: a `Progress`, or whether to report."""
    return progress if isinstance(progress, Progress) else Progress(bool(progress))


def quiet_library_bars(keep_on_terminal: Progress | None = None) -> None:
    """Silence transformers' "Loading weights" bars and the hub's download bars, unless `keep_on_terminal`
    is an enabled progress on a terminal (where a bar is readable)."""
    if keep_on_terminal is not None and keep_on_terminal.on_terminal:
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    logging.disable_progress_bar()
    disable_progress_bars()
