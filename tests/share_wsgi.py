"""The WSGI app of the gunicorn recipe (issue 12); run by tests/test_share_gunicorn.py as
``gunicorn --preload share_wsgi:app``; not a test module.

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

KEY = factory_for(os.environ["SHARE_IMPL"]).from_file(os.environ["SHARE_KEY_FILE"], inheritable=True)
with open(os.environ["SHARE_DECOY_FILE"], "rb") as _f:
    DECOY = _f.read()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    tag = hmac(KEY, environ.get("QUERY_STRING", "").encode()).hex().encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(tag))), ("X-Pid", str(os.getpid()))],
    )
    return [tag]
