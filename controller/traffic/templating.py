"""Where the Istio templates live: the wheel's copy, the source tree, or a directory the user gives."""

from __future__ import annotations

from pathlib import Path

import jinja2

from controller.traffic.render import TEMPLATE_NAMES, environment


def template_dir(override: Path | None = None) -> Path:
    """The first directory holding all templates: ``override``, the installed copy, the checkout."""
    package = Path(__file__).resolve().parents[1]  # controller/: the wheel puts templates/ inside it
    candidates = [override] if override is not None else [package / "templates", package.parent / "templates"]
    for candidate in candidates:
        if candidate is not None and all((candidate / name).is_file() for name in TEMPLATE_NAMES):
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no canarist templates ({', '.join(TEMPLATE_NAMES)}) found in {looked}")


def default_environment(override: Path | None = None) -> jinja2.Environment:
    """The jinja2 environment for rendering, over the templates found by :func:`template_dir`."""
    return environment(template_dir(override))
