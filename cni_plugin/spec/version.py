"""Spec versions pycni speaks, and the version rules of each verb."""

from __future__ import annotations

from .errors import IncompatibleVersion

ALL_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
# The reference decoder (pkg/version ConfigDecoder) reads a config without cniVersion as 0.1.0.
IMPLICIT_VERSION = "0.1.0"

# CHECK arrived in 0.4.0, STATUS and GC in 1.1.0 (SPEC §2 and spec-upgrades.md).
MINIMUM_FOR_VERB = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def parse(version: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); anything not three dot-separated integers is incompatible."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise IncompatibleVersion(f"invalid CNI version {version!r}", "expected MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def require_supported(version: str, supported: tuple[str, ...] = ALL_VERSIONS) -> None:
    parse(version)
    if version not in supported:
        raise IncompatibleVersion(
            f"incompatible CNI version {version}",
            f"this plugin supports {', '.join(supported)}",
        )


def require_verb_allowed(verb: str, version: str) -> None:
    minimum = MINIMUM_FOR_VERB.get(verb)
    if minimum is not None and not at_least(version, minimum):
        raise IncompatibleVersion(
            f"config version does not allow {verb}",
            f"{verb} needs cniVersion {minimum} or later, the config says {version}",
        )
