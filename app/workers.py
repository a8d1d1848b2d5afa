"""Worker processes that each accept connections on a socket of their own.

uvicorn's workers share one listening socket, and whichever is idle when connections arrive
accepts them all: after 2,000 buyers connected at once, one of two workers held 1,080 to 1,361
of them, and the sale waited on that one while the other idled. With SO_REUSEPORT (Linux)
every worker listens on a socket of its own bound to the same address, and the kernel spreads
new connections over them by a hash of their addresses, evenly.

uvicorn's supervisor (restarts, health checks, signals) is kept. It hands every worker the
sockets it was given, pickled: a `PerWorkerSocket` travels as its address and is bound again,
with SO_REUSEPORT, in the worker that unpickles it. The supervisor's own copy is bound too, so
that a port already taken fails at start, but never listens, so it is given no connection.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

logger = logging.getLogger("uvicorn.error")

# Linux balances a port's SO_REUSEPORT listeners by hash; elsewhere (the BSDs, macOS) the
# option lets sockets share a port without spreading connections: one shared socket it is.
SPREADS_CONNECTIONS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class PerWorkerSocket(socket.socket):
    """Bound here; pickled for a worker, it becomes a socket of that worker's own."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _bound, (self.family, self.getsockname())


def _bound(family: socket.AddressFamily, address: Any, kind: type[socket.socket] = socket.socket) -> socket.socket:
    sock = kind(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def run(config: uvicorn.Config) -> None:
    """Serve `config` (its app given as an import string) in `config.workers` processes."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = _bound(family, (config.host, config.port), PerWorkerSocket)
    logger.info("Uvicorn running on http://%s:%d with %d workers, each on its own socket (SO_REUSEPORT)",
                config.host, sock.getsockname()[1], config.workers)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
