"""Attachment records: which pod an ADD wired, for the network-policy controller of pycni-agent.

The bridge plugin records, at ADD, one small JSON file per attachment and removes it at DEL:

    <dir>/<containerID>-<ifname>.json
    {"containerID": "...", "ifname": "eth0", "namespace": "x", "name": "a",   from CNI_ARGS
     "ips": ["10.244.1.11", "fd00::11"], "hostVeth": "veth1a2b3c4d",       K8S_POD_NAMESPACE/NAME
     "network": "pycni"}                                                    GC removes by network

`<dir>` is the conf key `attachmentsDir`, else DEFAULT_DIR when it exists (pycni-agent creates it
when it enforces policy; without it nothing is written, so a node without policy pays one stat).

Isolation before the first packet: when the agent enforces policy it listens on `<dir>/.sync`.
ADD then asks it to compile and apply the node's rules with the new pod in them and waits for the
answer before returning the result: the runtime starts the pod's process, and publishes its
address, only after ADD returns, so no packet of or to the pod precedes its rules. A socket file
that does not answer (the agent was killed) fails the ADD with code 11 (try again later) after
undoing it: a pod never runs unfiltered on a node that enforces policy. The agent removes the
socket on a clean stop (then policy is off for new pods until it runs again).

Only json, os and socket here (the ADD path loads nothing else for this).
"""

from __future__ import annotations

import json
import os
import socket

DEFAULT_DIR = "/run/pycni/attachments"
SYNC_SOCKET = ".sync"
SYNC_TIMEOUT = 20.0  # compiling and loading 1000 policies takes ~2.5 s on 2 cores
SUFFIX = ".json"


class SyncFailed(Exception):
    """The agent enforces policy here but did not confirm the pod's rules."""


def directory(configured: str) -> str | None:
    """Where this ADD records: the configured dir (created), the default when it exists, or None."""
    if configured:
        os.makedirs(configured, mode=0o755, exist_ok=True)
        return configured
    return DEFAULT_DIR if os.path.isdir(DEFAULT_DIR) else None


def path(base: str, container_id: str, ifname: str) -> str:
    return os.path.join(base, f"{container_id}-{ifname}{SUFFIX}")


def pod_identity(cni_args: dict[str, str]) -> tuple[str, str]:
    """(namespace, name) from CNI_ARGS; ("", "") for a runtime that passes none (not a pod)."""
    return cni_args.get("K8S_POD_NAMESPACE", ""), cni_args.get("K8S_POD_NAME", "")


def record(base: str, container_id: str, ifname: str, namespace: str, name: str, ips: list[str],
           host_veth: str, network: str = "") -> str:
    """Write the attachment's record atomically (readers never see half a file); its path."""
    document = {"containerID": container_id, "ifname": ifname, "namespace": namespace, "name": name,
                "ips": ips, "hostVeth": host_veth, "network": network}
    target = path(base, container_id, ifname)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(document))
    os.replace(tmp, target)
    return target


def remove(base: str, container_id: str, ifname: str) -> None:
    try:
        os.unlink(path(base, container_id, ifname))
    except FileNotFoundError:
        pass


def read_all(base: str) -> list[dict[str, object]]:
    """Every record in `base` (the agent's side), oldest first (a newer record of an address wins
    over a stale one, policy_world.py); unreadable or half-written files are skipped."""
    found: list[tuple[float, str, dict[str, object]]] = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    for entry in names:
        if not entry.endswith(SUFFIX):
            continue
        full = os.path.join(base, entry)
        try:
            with open(full, encoding="utf-8") as fh:
                doc = json.loads(fh.read())
                mtime = os.fstat(fh.fileno()).st_mtime
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("ips"), list):
            found.append((mtime, entry, doc))
    return [doc for _, _, doc in sorted(found, key=lambda f: (f[0], f[1]))]


def gc(base: str, network: str, keep: set[tuple[str, str]]) -> list[str]:
    """GC: remove this network's records whose (containerID, ifname) the runtime no longer lists
    (a DEL that never ran); other networks' records in a shared directory stay. The paths removed."""
    removed = []
    for doc in read_all(base):
        if doc.get("network") != network:
            continue
        cid, ifname = str(doc.get("containerID", "")), str(doc.get("ifname", ""))
        if (cid, ifname) not in keep:
            remove(base, cid, ifname)
            removed.append(path(base, cid, ifname))
    return removed


def sync(base: str, reason: str, required: bool = True, timeout: float = SYNC_TIMEOUT, wait: bool = True) -> bool:
    """Ask the agent to apply the node's policy now and wait for its answer (wait=False: only
    ask, as DEL does).

    False when no agent enforces policy here (no socket file). SyncFailed when the socket is there
    but the agent does not confirm (and `required`): the caller fails the ADD."""
    address = os.path.join(base, SYNC_SOCKET)
    if not os.path.exists(address):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(address)
            conn.sendall(json.dumps({"sync": reason}).encode() + b"\n")
            if not wait:
                return True
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
        reply = json.loads(answer or b"{}")
    except (OSError, ValueError) as exc:
        if required:
            raise SyncFailed(f"the policy agent at {address} did not answer: {exc}") from exc
        return False
    if not reply.get("ok"):
        if required:
            raise SyncFailed(f"the policy agent did not apply the pod's rules: {reply.get('error', 'no reason')}")
        return False
    return True
