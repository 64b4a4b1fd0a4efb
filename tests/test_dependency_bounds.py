"""The dependency ranges in the metadata are true: what is installed satisfies them, and the
lowest run (``make test-lowest``, ``TELEWIRE_LOWEST_DEPS=1``) has each lower bound exactly."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
#: the extras the Makefile installs (its PACKAGES line), for the core
EXTRAS = ("dev", "s3", "speedups", "control")
CARRIERS = ("twilio", "bandwidth", "sip_bridge")  # the Makefile installs these three
LOWEST = os.environ.get("TELEWIRE_LOWEST_DEPS") == "1"


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def _requirements() -> list[tuple[str, Requirement]]:
    """(where it is declared, requirement) for everything the Makefile installs."""
    core = _project(ROOT / "pyproject.toml")
    found = [("telewire", Requirement(r)) for r in core["dependencies"]]
    for extra in EXTRAS:
        found += [(f"telewire[{extra}]", Requirement(r))
                  for r in core["optional-dependencies"][extra]]
    for name in CARRIERS:
        found += [(f"plugins/{name}", Requirement(r))
                  for r in _project(ROOT / "plugins" / name / "pyproject.toml")["dependencies"]]
    return [(where, req) for where, req in found if not req.name.startswith("telewire")]


def _lower_bound(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert len(bounds) == 1, f"{req}: expected one lower bound (>=)"
    return bounds[0]


def test_every_dependency_has_a_lower_bound():
    for where, req in _requirements():
        _lower_bound(req)  # raises with the requirement named


def test_the_makefile_installs_the_extras_checked_here():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PACKAGES := -e '\.\[" + ",".join(EXTRAS) + r"\]'", makefile, re.M)
    assert "--resolution lowest-direct $(PACKAGES)" in makefile


@pytest.mark.parametrize("where,req", _requirements(), ids=lambda x: str(x))
def test_the_installed_version_is_allowed_and_in_the_lowest_run_is_the_bound(where, req):
    installed = Version(metadata.version(req.name))
    assert req.specifier.contains(installed, prereleases=True), (
        f"{where} asks for {req}, {installed} is installed")
    if LOWEST:
        assert installed == _lower_bound(req), (
            f"{where} declares {req} but the lowest-direct resolution installed {installed}: "
            "the lower bound is not one the tests run on")
