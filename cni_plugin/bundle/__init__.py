"""The self-contained build of pycni (`make bundle`): one executable, many names.

scripts/bundle freezes pycni with PyInstaller (one-folder mode) into a folder holding the
interpreter, every dependency, the `nft` tool and one executable, `pycni`. What that executable
does depends on the name it was started under (argv[0], as runtimes exec plugins): see main.py.
install.py puts the folder onto a node (`pycni-install --host-root /host`).
"""
