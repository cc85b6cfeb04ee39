"""Listening: the socket bound before the server starts (a taken port is one clear error),
and uvicorn serving the app on it until Ctrl-C."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); OSError if it cannot be had."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url(host: str, sock: socket.socket) -> str:
    """The address to open: a wildcard host (0.0.0.0, ::) is named by this machine's name."""
    port = sock.getsockname()[1]
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C (or SIGTERM); open live pages are closed then."""
    # proxy_headers off: X-Forwarded-For never stands in for the client's address (uvicorn
    # would take it from any client that FORWARDED_ALLOW_IPS names), so a remote client can
    # never pass as this machine
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])
