"""pycni: CNI plugins for Linux nodes. Importing this package has no side effects."""

__version__ = "0.1.0"
