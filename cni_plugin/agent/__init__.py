"""pycni-agent: a warm node agent that serves the plugins over a unix socket, and its thin shim.

Importing this package must stay free: the installed shim imports `cni_plugin.agent.shim` on every
plugin exec, and that must cost no more than `_socket` and the framing module (see shim.py).
"""
