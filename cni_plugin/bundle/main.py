"""The bundle's one executable: dispatch on the name it was started under.

- `pycni-<plugin>` or `<plugin>` (bridge, host-local, ...): the plugin. As the venv install's
  agent shims: forward to pycni-agent on /run/pycni/agent.sock, in-process when it is not
  running. Runtimes give plugins no other environment, so the defaults are the product;
  PYCNI_AGENT_SOCKET (a path, or empty: always in-process) exists for tests and odd nodes.
- `pycni-agent`: the node agent; `pycni-agent --check [--socket PATH]` is its readiness probe
  (exit 0 when the agent accepts connections).
- `pycni-install`: the node installer (install.py).
- anything else (`pycni`): the admin CLI.

The plugin path runs on every exec: it touches only builtins (`posix`, `sys`) before handing
over to the shim, which itself avoids `os` and `json` (agent/shim.py).
"""

import posix
import sys

# == sorted(cni_plugin.entry.PLUGINS) (a unit test keeps them equal): a literal, so that naming
# a plugin costs no import.
PLUGIN_NAMES = ("bandwidth", "bridge", "firewall", "host-local", "loopback", "portmap", "tuning")
TOOL_NAMES = ("pycni", "pycni-agent", "pycni-install")
DEFAULT_SOCKET = "/run/pycni/agent.sock"  # == cni_plugin.agent.server.DEFAULT_SOCKET


def all_names() -> list[str]:
    """Every name the executable answers to: the tools and each plugin under both name sets."""
    return [*TOOL_NAMES, *(f"pycni-{p}" for p in PLUGIN_NAMES), *PLUGIN_NAMES]


def plugin_of(name: str) -> "str | None":
    plugin = name[len("pycni-") :] if name.startswith("pycni-") else name
    return plugin if plugin in PLUGIN_NAMES else None


def _run_plugin(plugin: str) -> int:
    raw = posix.environ.get(b"PYCNI_AGENT_SOCKET")
    socket_path = DEFAULT_SOCKET if raw is None else raw.decode()
    if not socket_path:
        from cni_plugin.entry import main as direct

        return direct(plugin)
    from cni_plugin.agent.shim import run

    return run(plugin, socket_path)


def agent_ready(socket_path: str, timeout: float = 2.0) -> bool:
    """Whether something accepts connections on the agent's socket (the readiness probe)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError:
            return False
    return True


def _run_agent(argv: list[str]) -> int:
    if "--check" in argv:
        import argparse

        parser = argparse.ArgumentParser(prog="pycni-agent --check")
        parser.add_argument("--check", action="store_true")
        parser.add_argument("--socket", default=DEFAULT_SOCKET)
        opts, _ = parser.parse_known_args(argv)
        if agent_ready(opts.socket):
            return 0
        sys.stderr.write(f"pycni-agent: nothing accepts connections on {opts.socket}\n")
        return 1
    from cni_plugin.agent.__main__ import main as agent_main

    return agent_main(argv)


def _scrub_environment() -> None:
    """Undo what PyInstaller's bootloader put into the environment (LD_LIBRARY_PATH pointing at
    the bundle's libraries, its _PYI_* bookkeeping), so that the node's own tools this process
    runs (iptables, delegated plugins, another pycni executable) start with their own libraries."""
    env = sys.modules.get("os")
    environ = env.environ if env is not None else None  # os is loaded by the frozen start-up
    for key in [k for k in posix.environ if k.startswith(b"_PYI_")]:
        posix.unsetenv(key)
        if environ is not None:
            environ.pop(key.decode(), None)
    orig = posix.environ.get(b"LD_LIBRARY_PATH_ORIG")
    if b"LD_LIBRARY_PATH" in posix.environ:
        if orig is not None:
            posix.putenv(b"LD_LIBRARY_PATH", orig)
        else:
            posix.unsetenv(b"LD_LIBRARY_PATH")
        if environ is not None:
            if orig is not None:
                environ["LD_LIBRARY_PATH"] = orig.decode()
            else:
                environ.pop("LD_LIBRARY_PATH", None)


def main() -> int:
    if getattr(sys, "frozen", False):
        _scrub_environment()
    name = sys.argv[0].rsplit("/", 1)[-1]
    plugin = plugin_of(name)
    if plugin is not None:
        return _run_plugin(plugin)
    if name == "pycni-agent":
        return _run_agent(sys.argv[1:])
    if name == "pycni-install":
        from .install import main as install_main

        return install_main(sys.argv[1:])
    from cni_plugin.cli import main as cli_main

    cli_main(prog_name="pycni")
    return 0


if __name__ == "__main__":
    sys.exit(main())
