"""Running the app: uvicorn workers sharing one listening socket with TCP_NODELAY (no Nagle delay).

Linux hands TCP_NODELAY from the listening socket to accepted connections, so small keep-alive responses
are not held back ~40 ms as with stock `uvicorn --workers N` (uvicorn issue 3149).
"""

from __future__ import annotations

import copy
import os
import socket
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

# GDAL (local COGs and S3 alike) and numba settings for every worker (documented in the README).
GDAL_ENV = {
    # MB of decoded blocks: the pooled datasets keep them across requests; one 4×3-tile z13 view of a 20-scene
    # composite needs ~350 MB (3 bands + mask × 20 scenes × ~10 blocks of 512² px), so 256 could not hold one
    "GDAL_CACHEMAX": "1024",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "50000000",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_BAND_BLOCK_CACHE": "HASHSET",
    # kernels are called from several request threads at once: use a thread-safe numba layer (omp/tbb)
    "NUMBA_THREADING_LAYER": "threadsafe",
}


# uvicorn's logging, plus jeo-tiler's own loggers (skipped scenes, computed tiles, exports).
LOG_CONFIG = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
LOG_CONFIG["loggers"].update(
    {name: {"handlers": ["default"], "level": "INFO", "propagate": False} for name in ("tiler", "mosaics")}
)


class NoDelayConfig(uvicorn.Config):
    """uvicorn configuration whose listening socket has TCP_NODELAY set."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def serve(host: str, port: int, workers: int, root_path: str = "", forwarded_allow_ips: str = "127.0.0.1") -> None:
    """Serve `tiler.main:app` with `workers` processes (GDAL env and MALLOC_ARENA_MAX set first).

    Behind a reverse proxy, `root_path` is the public path prefix the proxy strips, and the proxies in
    `forwarded_allow_ips` are trusted for `X-Forwarded-Proto`/`-For` (the public host is the `Host` header).
    """
    if "MALLOC_ARENA_MAX" not in os.environ:
        # glibc reads it at start-up: re-execute this command with it set.
        os.environ["MALLOC_ARENA_MAX"] = "2"
        os.execv(sys.executable, [sys.executable, "-m", "tiler.cli", *sys.argv[1:]])
    for name, value in GDAL_ENV.items():
        os.environ.setdefault(name, value)
    config = NoDelayConfig(
        "tiler.main:app", host=host, port=port, workers=workers, log_level="info", log_config=LOG_CONFIG,
        root_path=root_path.rstrip("/"), proxy_headers=True, forwarded_allow_ips=forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    sock = config.bind_socket()
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        server.run(sockets=[sock])
