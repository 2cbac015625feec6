"""Authentication: CurveZMQ keys derived from one shared key.

The operator writes a random key to a file readable only by its owner (``head -c 32 /dev/urandom
| base64 > /etc/lmcache/server.key; chmod 600 ...``) and gives the same file to the server and to
every client. Both derive from it, with SHA-256 under distinct labels, the server's and the
client's Curve25519 key pairs. The server's ZAP handler admits a connection only when the client
proves the derived client key (the CURVE handshake does the proving); traffic is then encrypted.
A client without the key, or with another key, cannot complete the handshake: the server never
sees its requests, and the client's calls time out (:class:`~lmcache_core.server.client.ServerUnavailable`).

:func:`requires_key` says which listen addresses need a key: every TCP address other than
127.0.0.1, ::1 and localhost (a Unix socket is guarded by its file mode instead).
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any
from urllib.parse import urlsplit

_LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


def requires_key(endpoint: str) -> bool:
    """True when ``endpoint`` (``tcp://host:port`` or ``ipc://path``) must be protected by a key."""
    if endpoint.startswith("ipc://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    return host not in _LOOPBACK and f"[{host}]" not in _LOOPBACK


def read_key_file(path: str) -> bytes:
    """The key in ``path``: at least 16 bytes after stripping whitespace, in a regular file that
    group and others cannot read (ValueError naming the path otherwise)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"auth_key_file: cannot read {path!r}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"auth_key_file: expected a regular file, given {path!r}")
    if st.st_mode & 0o077:
        raise ValueError(
            f"auth_key_file: expected mode 0600 or stricter (no group/other access), given "
            f"{oct(st.st_mode & 0o777)} on {path!r}; run chmod 600 {path}"
        )
    with open(path, "rb") as f:
        key = f.read().strip()
    if len(key) < 16:
        raise ValueError(f"auth_key_file: expected a key of at least 16 bytes, given {len(key)} in {path!r}")
    return key


def _keypair(key: bytes, role: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 Curve25519 keys of ``role`` derived from ``key``."""
    import zmq
    from zmq.utils import z85

    secret = z85.encode(hashlib.sha256(b"lmcache-core/server-auth/" + role.encode() + b"\0" + key).digest())
    return zmq.curve_public(secret), secret


def server_keys(key: bytes) -> tuple[bytes, bytes, bytes]:
    """``(server_public, server_secret, client_public)`` for the server side."""
    public, secret = _keypair(key, "server")
    client_public, _ = _keypair(key, "client")
    return public, secret, client_public


def client_keys(key: bytes) -> tuple[bytes, bytes, bytes]:
    """``(client_public, client_secret, server_public)`` for a client."""
    public, secret = _keypair(key, "client")
    server_public, _ = _keypair(key, "server")
    return public, secret, server_public


def secure_server_socket(ctx: Any, sock: Any, key: bytes) -> Any:
    """Make ``sock`` a CURVE server admitting only the client key derived from ``key``; returns
    the ZAP authenticator thread (stop it when the socket closes)."""
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    if not zmq.has("curve"):
        raise RuntimeError("auth: this libzmq has no CURVE support; install pyzmq wheels (bundled libsodium)")
    public, secret, client_public = server_keys(key)

    class _Allow:
        def callback(self, domain: str, client_key: bytes) -> bool:
            import hmac

            return hmac.compare_digest(client_key, client_public)  # both Z85

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_Allow())
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return auth
