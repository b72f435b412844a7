"""Suite source `package-file`: files inside a wheel on the package index, pinned by version and
sha256 (the reading is safebench/assets.py's, which also fetches and pins the wheel)."""

from __future__ import annotations

from pathlib import Path

from safebench import assets

Source = assets.PackageFileSource


def read(suite, source: Source, data_dir: Path | None) -> list[dict]:
    return assets.suite_items_from_package(suite.name, source.model_dump())
