"""Version comparison for the install policy (no downgrade, minimum-version floor).

Bundle versions come from many build systems ("1.2.3", "2024.05.1", "1.4.0-rc2",
"v3.1+build7"), so comparison is semver-ish rather than strict SemVer: numeric
components compare as numbers, a pre-release suffix sorts before the release, and
build metadata after ``+`` is ignored. Anything unparseable is refused loudly: a
policy that silently compares garbage could let a downgrade through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from ferry.errors import FerryError


class BadVersion(FerryError):
    pass


class BelowFloor(FerryError):
    """A version under ``[install] min_version``: nothing lifts the floor, not --force."""


_RE = re.compile(
    r"^v?(?P<nums>\d+(?:\.\d+)*)(?:[-~](?P<pre>[0-9A-Za-z.-]+))?(?:\+(?P<build>[0-9A-Za-z.-]+))?$"
)


def _pre_key(pre: str) -> tuple[tuple[int, int | str], ...]:
    # natural order inside identifiers, so rc2 < rc10 (plain SemVer would say otherwise,
    # and build systems that number release candidates mean the natural order)
    parts: list[tuple[int, int | str]] = []
    for p in pre.split("."):
        for run in re.findall(r"\d+|\D+", p):
            parts.append((0, int(run)) if run.isdigit() else (1, run))
    return tuple(parts)


@total_ordering
@dataclass(frozen=True)
class Version:
    text: str
    nums: tuple[int, ...]
    pre: str | None

    def _key(self) -> tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]:
        nums = self.nums
        while len(nums) > 1 and nums[-1] == 0:  # 1.2 == 1.2.0
            nums = nums[:-1]
        # a release (no pre) sorts after any of its pre-releases
        return (nums, 0 if self.pre else 1, _pre_key(self.pre) if self.pre else ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> Version:
    m = _RE.match(text.strip())
    if not m:
        raise BadVersion(
            f"version {text!r} is not of the form N[.N...][-pre][+build]; fix the bundle or config"
        )
    nums = tuple(int(n) for n in m.group("nums").split("."))
    return Version(text.strip(), nums, m.group("pre"))


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as a is older than, equal to or newer than b."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)


def below_floor(version: str, floor: str | None) -> bool:
    """True if ``version`` is older than ``floor`` (no floor: never)."""
    return bool(floor) and parse_version(version) < parse_version(floor or "")


def check_floor(version: str, floor: str | None, *, what: str, fix: str) -> None:
    """Raise BelowFloor if ``version`` is under ``floor``.

    There is deliberately no ``force`` parameter: the floor exists to keep known-bad
    old releases off the gateway, so every activation path checks it the same way.
    ``what`` names the thing ("slot B holds version"), ``fix`` says what to do.
    """
    if below_floor(version, floor):
        raise BelowFloor(f"{what} {version}, below the minimum {floor} set in [install] "
                         f"min_version; {fix}")
