"""The CNI error tree: every failure a plugin reports is one of these classes.

The class carries the spec code (SPEC §5, pkg/types/types.go); the dispatcher prints
``{cniVersion, code, msg, details}`` on stdout and exits 1. Owning modules translate foreign
exceptions (NetlinkError, OSError, a config model's ValueError) into these at their boundary with
``raise ... from exc``; anything that escapes untranslated becomes InternalError (999).

Codes 1-11 and 50/51 are the spec's; 100 and above are pycni's own and are listed in the README.
"""

from __future__ import annotations


class CNIError(Exception):
    """Base of every error a plugin reports to the runtime."""

    code: int = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def to_wire(self, cni_version: str) -> dict[str, object]:
        wire: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            wire["details"] = self.details
        return wire

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


# --- spec codes -------------------------------------------------------------------------------


class IncompatibleVersion(CNIError):
    code = 1


class UnsupportedField(CNIError):
    code = 2


class UnknownContainer(CNIError):
    code = 3


class InvalidEnvironment(CNIError):
    code = 4


class IOFailure(CNIError):
    code = 5


class DecodingFailure(CNIError):
    code = 6


class InvalidConfig(CNIError):
    code = 7


class InvalidNetns(CNIError):
    """CNI_NETNS is missing where required, does not exist, or is not a network namespace."""

    code = 8


class TryAgainLater(CNIError):
    code = 11


class PluginNotAvailable(CNIError):
    """STATUS: the plugin cannot serve ADD right now."""

    code = 50


class PluginNotAvailableLimited(CNIError):
    """STATUS: cannot ADD, and existing containers may have limited connectivity."""

    code = 51


class InternalError(CNIError):
    """Only the dispatcher raises this, for an exception nobody translated."""

    code = 999


# --- pycni codes (100+) -------------------------------------------------------------------------


class AddressExhausted(CNIError):
    """IPAM: no free address left in a range set."""

    code = 100


class AddressUnavailable(CNIError):
    """IPAM: a requested address is taken, is the gateway, or lies in no configured range."""

    code = 101


class DuplicateAllocation(CNIError):
    """IPAM: this (containerID, ifname) already holds an address in the range set."""

    code = 102


class NetlinkFailure(CNIError):
    """The kernel refused a netlink request; details carry the errno name."""

    code = 103


class InterfaceExists(CNIError):
    """ADD: CNI_IFNAME already exists in the container's namespace."""

    code = 104


class LinkConflict(CNIError):
    """A link with the configured name exists but is of the wrong kind (e.g. cni0 not a bridge)."""

    code = 105


class FirewallFailure(CNIError):
    """nftables (or iptables) refused a change."""

    code = 106


class DelegateFailure(CNIError):
    """A delegated plugin (IPAM) failed without a usable CNI error of its own."""

    code = 107


class CheckFailed(CNIError):
    """CHECK: the attachment differs from what ADD created; msg names what differs."""

    code = 108


class StoreFailure(CNIError):
    """IPAM store: the data directory could not be read or written consistently."""

    code = 109


class HostPortTaken(CNIError):
    """portmap: the host port (hostIP, protocol, port) is already mapped to another container."""

    code = 110


class NotFound(Exception):
    """Base for 'already gone' conditions (link, netns, reservation).

    Deliberately not a CNIError: DEL and undo steps catch it and count it as success; code paths
    where absence is an error convert it into the right CNIError themselves.
    """


class NetnsNotFound(NotFound):
    pass


class LinkNotFound(NotFound):
    pass
