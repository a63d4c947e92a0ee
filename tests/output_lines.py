"""A child process's output, line by line, for tests that wait for a line with a timeout."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import Callable


class OutputLines:
    """``process``'s stdout read in a thread (a blocking read cannot time out); every line read so far in ``seen``."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put(line.rstrip("\n"))

    def until(self, wanted: Callable[[str], bool], timeout: float) -> str:
        """The first line from here on that is ``wanted``; an AssertionError if none comes within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self.seen.append(self._lines.get(timeout=0.2))
                if wanted(self.seen[-1]):
                    return self.seen[-1]
        raise AssertionError(f"not seen within {timeout:g}s: {self.seen[-20:]}")
