"""buildsys: layered, locked, reproducible container images for data science."""

from __future__ import annotations

__version__ = "0.1.0"
