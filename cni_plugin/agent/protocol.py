"""The agent's wire format: pure framing, no I/O, no imports.

The shim speaks it on every plugin exec, so it is built from `bytes` and `int` alone (no `json`,
no `struct`: each import costs the shim milliseconds). One request and one reply per connection,
over a unix stream socket.

Request (shim -> agent)::

    b"PCNI" | version (1 byte) | header_len (u32 BE) | stdin_len (u32 BE) | header | stdin
    header = plugin name NUL env-entry NUL env-entry ...      (env entries are b"KEY=VALUE")

Neither a plugin name nor an environment entry can hold a NUL byte (execve(2) strings), so NUL is
a safe separator. Replies (agent -> shim)::

    b"S"                                                        the handler is about to run
    b"R" | exit code (u32 BE) | stdout_len (u32 BE) | stderr_len (u32 BE) | stdout | stderr

"S" is what makes a lost ADD safe to retry: the agent sends it, under the container's lock,
immediately before the handler starts. A shim that reaches end-of-stream without "S" knows the
agent changed nothing and may run the request itself; after "S" an ADD may be half done, so the
shim reports TryAgainLater (11) and the runtime's DEL cleans up (SPEC §3: DEL always follows).
An error the agent reports before starting (oversize request, refused peer) is an "R" without "S".
"""

MAGIC = b"PCNI"
VERSION = 1
PREFIX_LEN = len(MAGIC) + 1 + 4 + 4
STARTED = b"S"
REPLY = b"R"
REPLY_HEAD_LEN = 1 + 4 + 4 + 4
U32_MAX = 0xFFFFFFFF


class ProtocolError(ValueError):
    """Bytes that are not a pycni-agent frame."""


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _read_u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "big")


def encode_request(plugin: bytes, env: list[bytes], stdin: bytes) -> bytes:
    """The request frame for `plugin` with environment entries `env` (b"K=V") and `stdin`."""
    if not plugin or b"\0" in plugin:
        raise ProtocolError("the plugin name must be non-empty and hold no NUL byte")
    for entry in env:
        if b"\0" in entry or b"=" not in entry:
            raise ProtocolError("an environment entry must be KEY=VALUE without NUL bytes")
    header = b"\0".join([plugin, *env])
    if len(header) > U32_MAX or len(stdin) > U32_MAX:
        raise ProtocolError("request too large for the frame format")
    return MAGIC + bytes((VERSION,)) + _u32(len(header)) + _u32(len(stdin)) + header + stdin


def decode_prefix(prefix: bytes) -> tuple[int, int]:
    """(header_len, stdin_len) from the first PREFIX_LEN bytes of a request."""
    if len(prefix) != PREFIX_LEN:
        raise ProtocolError(f"request prefix must be {PREFIX_LEN} bytes, got {len(prefix)}")
    if prefix[: len(MAGIC)] != MAGIC:
        raise ProtocolError("not a pycni-agent request (bad magic)")
    version = prefix[len(MAGIC)]
    if version != VERSION:
        raise ProtocolError(f"unsupported pycni-agent protocol version {version} (this agent speaks {VERSION})")
    header_len = _read_u32(prefix, len(MAGIC) + 1)
    if header_len == 0:
        raise ProtocolError("empty request header (no plugin name)")
    return header_len, _read_u32(prefix, len(MAGIC) + 5)


def decode_header(header: bytes) -> tuple[str, dict[str, str]]:
    """(plugin name, environment) from a request header.

    Values are decoded as os.environ decodes them (UTF-8 with surrogateescape), so the handlers see
    exactly the strings they would see in a plugin process. A repeated key keeps its last value.
    """
    plugin, *entries = header.split(b"\0")
    if not plugin:
        raise ProtocolError("empty plugin name")
    environ: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            raise ProtocolError(f"malformed environment entry {entry[:40]!r}")
        environ[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return plugin.decode("utf-8", "surrogateescape"), environ


def encode_reply(code: int, stdout: bytes, stderr: bytes) -> bytes:
    if not 0 <= code <= U32_MAX:
        raise ProtocolError(f"exit code {code} out of range")
    return REPLY + _u32(code) + _u32(len(stdout)) + _u32(len(stderr)) + stdout + stderr


def decode_replies(buffer: bytes) -> tuple[bool, tuple[int, bytes, bytes] | None]:
    """What `buffer` (everything received so far) says: (started, (code, stdout, stderr) or None).

    None means the reply is not complete yet. Raises ProtocolError on bytes that cannot be a reply.
    """
    started = buffer[:1] == STARTED
    rest = buffer[1:] if started else buffer
    if not rest:
        return started, None
    if rest[:1] != REPLY:
        raise ProtocolError(f"unexpected reply byte {rest[:1]!r}")
    if len(rest) < REPLY_HEAD_LEN:
        return started, None
    code, out_len, err_len = _read_u32(rest, 1), _read_u32(rest, 5), _read_u32(rest, 9)
    end = REPLY_HEAD_LEN + out_len + err_len
    if len(rest) < end:
        return started, None
    if len(rest) > end:
        raise ProtocolError("trailing bytes after the reply")
    out = rest[REPLY_HEAD_LEN : REPLY_HEAD_LEN + out_len]
    return started, (code, out, rest[REPLY_HEAD_LEN + out_len : end])
