"""The executables pycni installs, by plugin name, and their common `main`.

Importing this module costs only `spec.plugin` (the version table; no stdlib module a
`python3 -IS` start has not loaded). VERSION and the about line are answered from there; every
other verb loads the dispatcher, and each plugin's handler module (with pyroute2) is imported
only when its verb runs.
"""

from __future__ import annotations

import posix
import sys

from .spec.plugin import Plugin, about_text, read_version_input, version_reply

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# First bytes of every installed executable's second line (scripts/install.py writes it), or of
# a compiled shim's .note.pycni (within invoke.HEAD_BYTES): lets invoke.py recognise pycni's own
# plugins on CNI_PATH whatever name they were installed under.
SHIM_MARKER = "# pycni-shim:"


def _handlers_of(module: str) -> Callable[[], Any]:
    """A loader of `module`.HANDLERS: the plugin's module (with pyroute2) loads on first use."""

    def load() -> Any:
        # The builtin __import__ (a non-empty fromlist returns the submodule): importlib itself
        # is not loaded yet on the VERSION path, and need not be.
        return __import__(module, fromlist=["HANDLERS"]).HANDLERS

    return load


PLUGINS: dict[str, Plugin] = {
    "bridge": Plugin(
        name="bridge",
        about="connects the container to a Linux bridge through a veth pair",
        load_handlers=_handlers_of("cni_plugin.bridge"),
    ),
    "portmap": Plugin(
        name="portmap",
        about="forwards host ports to the container through nftables (chained after an interface plugin)",
        load_handlers=_handlers_of("cni_plugin.portmap"),
    ),
    "loopback": Plugin(
        name="loopback",
        about="sets the loopback interface up in the container namespace",
        load_handlers=_handlers_of("cni_plugin.loopback"),
    ),
    "bandwidth": Plugin(
        name="bandwidth",
        about="shapes the container's traffic with tbf qdiscs (an IFB for egress), chained after a veth plugin",
        load_handlers=_handlers_of("cni_plugin.bandwidth"),
        versions=("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
    ),
    "host-local": Plugin(
        name="host-local",
        about="host-local IPAM: allocates addresses from range sets, stored on this node",
        load_handlers=_handlers_of("ipam.main"),
    ),
    "tuning": Plugin(
        name="tuning",
        about="sets net sysctls, MAC, MTU, promisc, allmulti and txqueuelen of the pod interface; restores them on DEL",
        load_handlers=_handlers_of("cni_plugin.tuning"),
    ),
    "firewall": Plugin(
        name="firewall",
        about="accepts the pod's forwarded traffic, with an admin chain and bridge isolation (nftables or iptables)",
        load_handlers=_handlers_of("cni_plugin.firewall.plugin"),
    ),
}


def _cni_command() -> str:
    """CNI_COMMAND from os.environ when `os` is loaded (a test, the agent, the bundle: it is the
    live environment), else from the interpreter's own copy: an installed executable starts with
    `-IS`, where importing `os` only to read one variable would cost VERSION ~2 ms of ~8."""
    os = sys.modules.get("os")
    if os is not None:
        return str(os.environ.get("CNI_COMMAND", ""))
    return posix.environ.get(b"CNI_COMMAND", b"").decode("utf-8", "surrogateescape")


def main(name: str | None = None, *, exit_after_version: bool = False) -> int:
    """Entry point: the plugin named `name`, or by the executable's name (pycni-<name> or <name>).

    `exit_after_version` (the installed executables): once VERSION's answer is flushed, end the
    process without interpreter finalization (module teardown and GC, ~3 ms of a ~15 ms answer);
    VERSION opened nothing else that finalization would have to close."""
    if name is None:
        base = sys.argv[0].rpartition("/")[2]
        name = base[len("pycni-") :] if base.startswith("pycni-") else base
    plugin = PLUGINS.get(name)
    if plugin is None:
        sys.stderr.write(f"pycni: no plugin named {name!r}; known: {', '.join(sorted(PLUGINS))}\n")
        return 2
    verb = _cni_command()
    if verb == "VERSION":
        sys.stdout.write(version_reply(plugin, read_version_input(sys.stdin.buffer)))
        if exit_after_version:
            try:
                sys.stdout.flush()
            except OSError:
                posix._exit(1)  # as the interpreter exits when it cannot flush stdout
            posix._exit(0)
        return 0
    if not verb:
        sys.stderr.write(about_text(plugin))
        return 0
    from .spec import skel

    return skel.main(plugin)
