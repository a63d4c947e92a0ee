"""What the CLI's command modules share: one-line user errors and policy loading that never tracebacks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from controller.api.load import MAX_BYTES, Diagnostic, PolicyError, load
from controller.api.model import ModelRollout

EXIT_INVALID = 2


class UserError(click.ClickException):
    """A mistake in what the user gave us: printed as one line, exit status 2."""

    exit_code = EXIT_INVALID

    def show(self, file: Any = None) -> None:
        click.echo(f"canarist: error: {self.format_message()}", err=True)


def load_file(path: Path, *, ignore_other_kinds: bool = False) -> list[ModelRollout]:
    """Read and validate a policy file; every problem, I/O included, becomes a PolicyError."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise PolicyError([Diagnostic(source, 1, 1, "", f"file is larger than {MAX_BYTES // 1024} KiB")])
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([Diagnostic(source, 1, 1, "", f"not UTF-8 text: {exc.reason}")]) from None
    except OSError as exc:
        raise PolicyError([Diagnostic(source, 1, 1, "", f"cannot read: {exc.strerror or exc}")]) from None
    return load(text, source, ignore_other_kinds=ignore_other_kinds)


def load_or_fail(path: Path) -> list[ModelRollout]:
    """Load a policy for a command that acts on it: print its problems and exit 2 if invalid."""
    try:
        return load_file(path)
    except PolicyError as exc:
        for diagnostic in exc.diagnostics:
            click.echo(str(diagnostic), err=True)
        sys.exit(EXIT_INVALID)
