"""The apps of the gunicorn and uvicorn recipes (issue 12); run by
tests/test_share_gunicorn.py as ``gunicorn --preload share_wsgi:app`` (WSGI: sync and gthread
workers) and ``gunicorn --preload -k uvicorn.workers.UvicornWorker share_wsgi:asgi`` (ASGI);
not a test module.

Loaded once, in the master (``--preload``): the key is read from a file straight into a shareable
secret; every forked worker maps and locks its own view at its first request and answers each
request with the HMAC of its query string under the key. ``DECOY`` is the control: a key loaded
the usual way, as ``bytes``, which the memory scan must find in every worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Callable

from securememory._factory import factory_for
from securememory.crypto import hmac

KEY = factory_for(os.environ["SHARE_IMPL"]).from_file(
    os.environ["SHARE_KEY_FILE"], inheritable=True
)
with open(os.environ["SHARE_DECOY_FILE"], "rb") as _f:
    DECOY = _f.read()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    tag = hmac(KEY, environ.get("QUERY_STRING", "").encode()).hex().encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(tag))),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [tag]


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same answer as :func:`app`, from an ASGI app (uvicorn workers)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    tag = hmac(KEY, scope.get("query_string", b"")).hex().encode()
    headers = [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": tag})
