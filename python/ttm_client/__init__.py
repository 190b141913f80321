"""The real client behind a full-NAT load balancer, as the ttm agent recovered it.

``real_client(sock)`` asks the kernel first — ``getsockopt(SOL_IP, 1345)``,
which ttm answers for services in its compat cgroups — and the ttm daemon's
lookup socket second. ``TtmMiddleware`` puts the real client into an ASGI
app's ``scope["client"]``, so FastAPI/Starlette see IPv6 clients on an
``AF_INET`` listener (6to4), where ``accept()`` cannot carry them.
Standard library only; Linux.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
from typing import Any, Awaitable, Callable, Dict, MutableMapping, Optional, Tuple

__all__ = [
    "DEFAULT_SOCKET",
    "PEER_SOCKOPT",
    "RealClient",
    "real_client",
    "real_client_async",
    "lookup_fd",
    "lookup_tuple",
    "TtmMiddleware",
]

#: Where the ttm daemon answers lookups (``$TTM_SOCKET`` overrides it).
DEFAULT_SOCKET = "/run/ttm/ttm.sock"
#: ``getsockopt(SOL_IP, PEER_SOCKOPT)`` returns ``struct ttm_peer``.
PEER_SOCKOPT = 1345
_PEER_LEN = 20
_TIMEOUT = 2.0

#: ``(ip, port, family)``: the client's address as text, its port, and
#: ``socket.AF_INET`` or ``socket.AF_INET6``.
RealClient = Tuple[str, int, int]


def _socket_path(path: Optional[str]) -> str:
    return path or os.environ.get("TTM_SOCKET") or DEFAULT_SOCKET


def parse_ttm_peer(raw: bytes) -> Optional[RealClient]:
    """Decodes ``struct ttm_peer {u16 af (host order); be16 port; u8 addr[16]}``."""
    if len(raw) < _PEER_LEN:
        return None
    af = struct.unpack("=H", raw[0:2])[0]
    port = struct.unpack("!H", raw[2:4])[0]
    if af == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port, socket.AF_INET
    if af == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[4:20]), port, socket.AF_INET6
    return None


def _from_sockopt(sock: socket.socket) -> Optional[RealClient]:
    try:
        raw = sock.getsockopt(socket.SOL_IP, PEER_SOCKOPT, _PEER_LEN)
    except OSError:
        return None
    return parse_ttm_peer(raw)


def _parse_found(line: bytes) -> Optional[RealClient]:
    reply: Dict[str, Any] = json.loads(line)
    if "error" in reply:
        if reply["error"] == "not_found":
            return None
        raise OSError(f"ttm: {reply['error']}: {reply.get('reason', '')}")
    host, _, port = reply["client"].rpartition(":")
    addr = ipaddress.ip_address(host.strip("[]"))
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return str(addr), int(port), family


def _ask(request: bytes, fds: Tuple[int, ...], path: Optional[str]) -> Optional[RealClient]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as daemon:
        daemon.settimeout(_TIMEOUT)
        daemon.connect(_socket_path(path))
        if fds:
            socket.send_fds(daemon, [request], list(fds))
        else:
            daemon.sendall(request)
        line = b""
        while not line.endswith(b"\n"):
            chunk = daemon.recv(4096)
            if not chunk:
                break
            line += chunk
    return _parse_found(line)


def lookup_fd(sock: socket.socket, path: Optional[str] = None) -> Optional[RealClient]:
    """Asks the ttm daemon about ``sock`` (passed with ``SCM_RIGHTS``)."""
    return _ask(b'{"op":"fd"}\n', (sock.fileno(),), path)


def _addr_text(addr: Tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def lookup_tuple(
    local: Tuple[Any, ...], peer: Tuple[Any, ...], path: Optional[str] = None
) -> Optional[RealClient]:
    """Asks the ttm daemon about the connection ``local`` ↔ ``peer`` (the
    peer as the app sees it: the load balancer, or the client after ttm's
    rewrite); addresses as ``(host, port)``."""
    request = json.dumps({"op": "tuple", "local": _addr_text(local), "peer": _addr_text(peer)})
    return _ask(request.encode() + b"\n", (), path)


def real_client(sock: socket.socket, path: Optional[str] = None) -> Optional[RealClient]:
    """The real client of the accepted TCP socket ``sock``: ``(ip, port,
    family)``, or ``None`` when ttm has no record (a direct client, an
    untrusted peer, no option: ``sock.getpeername()`` is then the client).
    Tries ``getsockopt(SOL_IP, 1345)``, then the daemon; a daemon that
    cannot be reached counts as no record."""
    found = _from_sockopt(sock)
    if found is not None:
        return found
    try:
        return lookup_fd(sock, path)
    except OSError:
        return None


async def real_client_async(
    sock: socket.socket, path: Optional[str] = None
) -> Optional[RealClient]:
    """``real_client`` for asyncio code: the daemon is asked on the default
    executor, so the event loop never waits on it."""
    found = _from_sockopt(sock)
    if found is not None:
        return found
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, lookup_fd, sock, path)
    except OSError:
        return None


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class TtmMiddleware:
    """ASGI middleware: ``scope["client"]`` becomes the real client for HTTP
    and WebSocket connections ttm has a record of; other scopes, and
    connections without a record, pass unchanged.

    The connection is found by its addresses (``scope["server"]`` and
    ``scope["client"]``), one tuple lookup on the daemon's socket — which
    works with any ASGI server, without access to its sockets::

        app = FastAPI()
        app.add_middleware(TtmMiddleware)
    """

    def __init__(self, app: ASGIApp, socket_path: Optional[str] = None) -> None:
        self.app = app
        self.socket_path = socket_path

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket") and scope.get("client") and scope.get("server"):
            loop = asyncio.get_running_loop()
            try:
                found = await loop.run_in_executor(
                    None, lookup_tuple, tuple(scope["server"]), tuple(scope["client"]), self.socket_path
                )
            except (OSError, ValueError):
                found = None
            if found is not None:
                scope = dict(scope)
                scope["client"] = (found[0], found[1])
        await self.app(scope, receive, send)
