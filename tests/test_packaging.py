"""Every package folder in the tree is installed by a regular (non-editable) install."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {f"autofuse.{name}" if name != "autofuse" else "autofuse": name
               for name in ("autofuse", "search", "costmodel", "datasets", "runners")}
    assert set(folders) <= listed
    for package, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((package, *parts)) in listed, f"{init.parent} is not installed"
    assert config["package-dir"]["autofuse.datasets"] == "datasets"
