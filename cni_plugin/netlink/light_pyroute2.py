"""Load pyroute2's message classes without its package root.

`pyroute2/__init__.py` imports every pyroute2 subsystem (NDB, IPDB, conntrack, wireless, the
asyncio sockets...): ~110 ms of a daemonless plugin's start, for a plugin that needs three
message classes (~25 ms). Importing `pyroute2.netlink.rtnl.ifinfmsg` runs that root first, so
this module registers the package without running it: a module object with pyroute2's own spec
and search path, whose submodules then import as usual. The first use of a name from the root
itself (`from pyroute2 import IPRoute`, `pyroute2.NDB`) runs the real `__init__.py` once, in the
same module object: code that wants all of pyroute2 still gets all of it, only later.

Nothing happens when pyroute2 is already imported (the agent, tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

PACKAGE = "pyroute2"


def _register() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        return  # not installed: the import that follows reports it as usual
    root = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        # Module-level __getattr__ (PEP 562): only names the root has not got yet arrive here.
        # A submodule's name is one (`from pyroute2 import config` asks before importing it):
        # import just that. Dunder probes (copy, inspect, mock) get no answer.
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{PACKAGE}.{name}")
        del root.__dict__["__getattr__"]
        loader.exec_module(root)
        return getattr(root, name)

    root.__dict__["__getattr__"] = complete
    sys.modules[PACKAGE] = root


_register()
