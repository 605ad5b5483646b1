"""host-local IPAM for pycni: pure range/allocation logic over a Store (disk or memory).

Importing the package has no side effects; `ipam.main.HANDLERS` is the entry point.
"""
