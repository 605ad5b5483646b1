"""The CNI protocol, pure: errors, versions, result types and conversion, the dispatcher.

Nothing here imports pyroute2, pydantic, fcntl or subprocess.
"""
