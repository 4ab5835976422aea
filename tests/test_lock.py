"""Reproducible installs: requirements.lock pins every dependency of pyproject.toml (extras
too) at a version inside its range, and make installs from it; README starts with make."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:                      # Python 3.10: pip's vendored copy
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin name==version"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_of_pyproject_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    pins = _lock()
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep.name} is in pyproject.toml but not pinned in requirements.lock"
        assert dep.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {dep.name}=={pins[name]}, outside pyproject's {dep}")


def test_make_installs_from_the_lock_and_can_refresh_it():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c \$\(LOCK\)", makefile)
    assert "LOCK   := requirements.lock" in makefile
    assert re.search(r"^lock:", makefile, re.M)


def test_readme_first_command_block_shows_experiments_and_test():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    assert "make experiments" in block and "make test" in block
