"""The recipes of the docs (``docs/recipes/*.rst``), run as printed there.

Each recipe's code is the ``code-block`` named ``recipe-...`` on its page: :func:`recipe` reads it
from the ``.rst`` and this file executes it, so the page and the test cannot drift apart. Where a
page claims what copies of a secret a process holds, a child process (this file run as a script,
:func:`child_main`) runs the recipe and pauses at checkpoints while the test scans its whole
memory (``/proc/<pid>/mem``, as ``tests/test_heap_proof.py`` does) for the secret; the secret
reaches the child only through a file or a pipe, never as a Python object, so every copy found
was made by the code under test. Each scan has its control: the ordinary way of doing the same
thing, whose copies the same scan finds.

The PostgreSQL recipe runs against a real server the test starts (Debian's ``postgresql``
package: ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``, run as the ``postgres``
user when the test runs as root, since PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import gc
import glob
import hashlib
import hmac as stdlib_hmac
import http.server
import importlib.util
import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import require

from securememory import SecretFactory, _inspect

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
LINUX = sys.platform.startswith("linux")


# ---------------------------------------------------------------------------------------------
# The recipes, read from the pages
# ---------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"^\.\. code-block:: python\n((?:   :\w+:.*\n)*)\n((?:(?:   .*)?\n)+)", re.M)


def recipe_blocks() -> dict[str, str]:
    """Every ``code-block:: python`` with a ``:name:`` on the docs pages, by name, dedented."""
    blocks: dict[str, str] = {}
    for page in sorted(DOCS.rglob("*.rst")):
        for m in _BLOCK.finditer(page.read_text()):
            name = re.search(r":name: (\S+)", m.group(1))
            if name is None:
                continue
            assert name.group(1) not in blocks, f"{name.group(1)} named twice"
            lines = [line[3:] for line in m.group(2).splitlines()]
            blocks[name.group(1)] = "\n".join(lines).strip() + "\n"
    return blocks


def recipe(*names: str, **given: Any) -> dict[str, Any]:
    """Execute the named blocks, in order, in one namespace that starts with ``given``."""
    blocks = recipe_blocks()
    namespace: dict[str, Any] = {"__name__": "recipe", **given}
    for name in names:
        exec(compile(blocks[name], f"<docs {name}>", "exec"), namespace)
    return namespace


def test_every_recipe_block_is_run_here() -> None:
    """Every named recipe block on the pages is executed by a test of this file: a recipe
    added to the docs without a test fails here."""
    source = pathlib.Path(__file__).read_text()
    blocks = recipe_blocks()
    assert blocks, "no recipe blocks found in docs/"
    missing = [name for name in blocks if f'"{name}"' not in source]
    assert not missing, f"recipe blocks no test runs: {missing}"


# ---------------------------------------------------------------------------------------------
# The child that runs a recipe while the test scans it
# ---------------------------------------------------------------------------------------------


def checkpoint(label: str, **info: Any) -> None:
    """In the child: tell the parent where we are, wait until it has scanned."""
    print(json.dumps({"label": label, **info}), flush=True)
    sys.stdin.readline()


def _data_range(secret: Any) -> dict[str, int]:
    return {"data": secret._data, "size": secret._size}


def scenario_psycopg(args: dict[str, Any]) -> None:
    """Connect with the recipe (``passfile``) or with ``password=`` (the control)."""
    import psycopg

    ns = recipe("recipe-psycopg")
    target = {"host": "127.0.0.1", "port": args["port"], "dbname": "postgres", "user": "app"}
    secret = SecretFactory().from_file(args["password_path"])
    if args["how"] == "passfile":
        conn = ns["connect"](secret, **target)
    else:
        with secret.access() as view:
            password = bytes(view).decode()  # what a program without this library has
        conn = psycopg.connect(password=password, **target)
        del password
    secret.close()
    gc.collect()
    user = conn.execute("SELECT current_user").fetchone()
    checkpoint("open", user=user[0] if user else None)
    conn.close()
    del conn
    gc.collect()
    checkpoint("closed")


def scenario_http(args: dict[str, Any]) -> None:
    """One request with the ``http.client`` recipe, or with the ``sendmsg`` one."""
    block, function = {
        "http.client": ("recipe-http-client", "get_with_token"),
        "sendmsg": ("recipe-http-sendmsg", "get_with_token_sendmsg"),
    }[args["how"]]
    get = recipe(block)[function]
    token = SecretFactory().from_file(args["token_path"])
    checkpoint("open", **_data_range(token))
    if args["how"] == "http.client":  # pause where http.client sends the request head
        import http.client

        send = http.client.HTTPConnection.send

        def paused_send(self: http.client.HTTPConnection, data: Any) -> None:
            checkpoint("sending", **_data_range(token))
            send(self, data)

        http.client.HTTPConnection.send = paused_send  # type: ignore[method-assign]
    status, body = get("127.0.0.1", args["port"], "/data", token)
    token.close()
    gc.collect()
    checkpoint("closed", status=status, body=body.decode())


def scenario_cli(args: dict[str, Any]) -> None:
    """Read the key through a pipe with the recipe, or with ``subprocess.run`` (the control)."""
    argv = ["sh", "-c", 'printf "%s" "$(cat "$1")"', "sh", args["key_path"]]
    if args["how"] == "recipe":
        secret = recipe("recipe-cli-pipe")["key_from_cli"](argv, args["size"])
        checkpoint("open", **_data_range(secret))
        secret.close()
    else:  # what a program without this library does
        out = subprocess.run(argv, capture_output=True, check=True).stdout
        checkpoint("open")
        del out
    gc.collect()
    checkpoint("closed")


SCENARIOS = {"psycopg": scenario_psycopg, "http": scenario_http, "cli": scenario_cli}


def child_main() -> None:
    request = json.loads(sys.stdin.readline())
    SCENARIOS[request["scenario"]](request["args"])
    print(json.dumps({"label": "done"}), flush=True)


@dataclass
class Scan:
    """What one checkpoint of the child said, and where the scan found the needle."""

    info: dict[str, Any]
    hits: list[tuple[int, str]] = field(default_factory=list)

    def outside(self) -> list[tuple[int, str]]:
        """Hits outside the secret's own data (when the child named it)."""
        lo = self.info.get("data")
        if lo is None:
            return self.hits
        return [(a, p) for a, p in self.hits if not lo <= a < lo + self.info["size"]]


def run_child(
    scenario: str, needle: bytes, shared: dict[str, Any] | None = None, **args: Any
) -> dict[str, Scan]:
    """Run ``scenario`` in a child; at each checkpoint scan its memory for ``needle``.
    ``shared`` receives the child's ``pid`` and, at each checkpoint, its ``info``."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    if shared is not None:
        shared["pid"] = proc.pid
    scans: dict[str, Scan] = {}
    try:
        proc.stdin.write(json.dumps({"scenario": scenario, "args": args}) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            info = json.loads(line)
            label = info.pop("label")
            if label == "done":
                break
            scans[label] = scan_child(proc.pid, needle, info)
            if shared is not None:
                shared["info"] = info
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        status = proc.wait(60)
    assert status == 0, f"{scenario} child exited with {status}"
    print(scenario, args.get("how"), {k: (len(v.hits), v.hits) for k, v in scans.items()})
    return scans


def scan_child(pid: int, needle: bytes, info: dict[str, Any]) -> Scan:
    scan = _inspect.scan_memory(pid, [needle])
    return Scan(info, [(a, p or "[anon]") for a, p in scan.hits[needle]])


needs_scan = pytest.mark.skipif(not LINUX, reason="scans /proc/<pid>/mem (Linux)")


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def _postgres_unavailable() -> str | None:
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install -e '.[docs]')"
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "no PostgreSQL server binaries (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and there is no runuser to start the server as postgres"
    return None


@dataclass
class Postgres:
    """A PostgreSQL server of our own: TCP on 127.0.0.1 with scram-sha-256, role ``app``."""

    port: int
    password: str
    admin: dict[str, Any]  # conninfo of the superuser over the Unix socket (trust)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    require(_postgres_unavailable(), "the psycopg recipe against a real PostgreSQL server")
    import psycopg

    bindir = os.path.dirname(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1])
    top = tempfile.mkdtemp(prefix="securememory-pg-")
    data, sock = os.path.join(top, "data"), os.path.join(top, "sock")
    os.mkdir(sock)
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (top, sock):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    password = secrets.token_urlsafe(24)
    ctl = [*as_user, f"{bindir}/pg_ctl", "-D", data, "-w"]

    def run(cmd: list[str]) -> None:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{cmd[len(as_user)]}: {out.stdout}{out.stderr}"

    try:
        run(
            [
                *as_user,
                f"{bindir}/initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run([*ctl, "-l", os.path.join(top, "log"), "-o", options, "start"])
        admin: dict[str, Any] = {"host": sock, "port": port, "user": "postgres"}
        admin["dbname"] = "postgres"
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE app LOGIN PASSWORD {}").format(
                    psycopg.sql.Literal(password)
                )
            )
        yield Postgres(port, password, admin)
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def secret_file(value: bytes) -> Iterator[str]:
    """A 0600 file holding ``value`` (how a secret reaches a child without being an object)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, value)
        os.close(fd)
        yield path


def test_psycopg_usage_block_connects(
    postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page's usage block, as printed: connects as ``app`` and prints the user."""
    with secret_file(postgres.password.encode()) as path:
        recipe(
            "recipe-psycopg",
            "recipe-psycopg-usage",
            password_path=path,
            host="127.0.0.1",
            port=postgres.port,
        )
    assert capsys.readouterr().out == "app\n"


def test_psycopg_passfile_escapes_and_is_gone(postgres: Postgres) -> None:
    """A password with ``:`` and ``\\`` (which the passfile format escapes) connects; the memfd
    is closed after ``connect``; a wrong password is refused (so the file is what libpq used)."""
    import psycopg

    ns = recipe("recipe-psycopg")
    tricky = "a:b\\c:" + secrets.token_urlsafe(8)
    with psycopg.connect(**postgres.admin, autocommit=True) as admin:
        sql = psycopg.sql.SQL("ALTER ROLE app PASSWORD {}")
        admin.execute(sql.format(psycopg.sql.Literal(tricky)))
        try:
            factory = SecretFactory()
            target = {"host": "127.0.0.1", "port": postgres.port, "dbname": "postgres"}
            fds = set(os.listdir("/proc/self/fd"))
            with factory.new(bytearray(tricky.encode())) as secret:
                conn = ns["connect"](secret, user="app", **target)
            with conn:
                assert conn.execute("SELECT current_user").fetchone() == ("app",)
            assert set(os.listdir("/proc/self/fd")) <= fds, "the passfile's fd was left open"
            with (
                factory.new(bytearray(b"wrong")) as wrong,
                pytest.raises(psycopg.OperationalError, match="password authentication failed"),
            ):
                ns["connect"](wrong, user="app", **target)
        finally:
            admin.execute(sql.format(psycopg.sql.Literal(postgres.password)))


@needs_scan
def test_psycopg_copies(postgres: Postgres) -> None:
    """The page's table. With ``password=`` (the control) copies are found while the connection
    is open and after it is closed (psycopg's conninfo string); with the passfile, none after
    close and fewer while open (only libpq's own, which it wipes at close)."""
    needle = postgres.password.encode()
    with secret_file(needle) as path:
        control = run_child(
            "psycopg", needle, how="password", port=postgres.port, password_path=path
        )
        recipe_ = run_child(
            "psycopg", needle, how="passfile", port=postgres.port, password_path=path
        )
    assert control["open"].info["user"] == recipe_["open"].info["user"] == "app"
    assert len(control["closed"].hits) >= 1, "control: the scan must find psycopg's copy"
    assert len(control["open"].hits) >= 2
    assert recipe_["closed"].hits == [], recipe_["closed"].hits
    assert len(recipe_["open"].hits) < len(control["open"].hits)
    assert all(path == "[heap]" for _, path in recipe_["open"].hits), "only libpq's malloc heap"


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def http_server(
    token: bytes, client: dict[str, Any] | None = None
) -> Iterator[tuple[int, list[str]]]:
    """A local ``http.server`` in a thread that answers 200 ``ok`` to the right bearer token,
    401 otherwise; yields its port and the Authorization values it received.

    With ``client`` (filled by :func:`run_child`), it scans the client's memory for the token
    before it answers, while the client waits for the response: ``client["in_flight"]``."""
    seen: list[str] = []
    expected = "Bearer " + token.decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got = self.headers.get("Authorization", "")
            seen.append(got)
            if client is not None:
                client["in_flight"] = scan_child(client["pid"], token, client["info"])
            ok = stdlib_hmac.compare_digest(got, expected)
            body = b"ok" if ok else b"denied"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    ("block", "function"),
    [("recipe-http-client", "get_with_token"), ("recipe-http-sendmsg", "get_with_token_sendmsg")],
)
def test_http_recipes_authenticate(block: str, function: str) -> None:
    """Each recipe sends the right header (200), a wrong token is refused (401)."""
    token = secrets.token_urlsafe(24).encode()
    get = recipe(block)[function]
    factory = SecretFactory()
    with http_server(token) as (port, seen):
        with factory.new(bytearray(token)) as secret:
            assert get("127.0.0.1", port, "/data", secret) == (200, b"ok")
        with factory.new(bytearray(b"not-the-token")) as wrong:
            assert get("127.0.0.1", port, "/data", wrong) == (401, b"denied")
    assert seen == ["Bearer " + token.decode(), "Bearer not-the-token"]


@needs_scan
def test_http_copies() -> None:
    """What the page says. ``http.client`` has copies of the token outside the secret when it
    sends the request head (the control: the scan sees them). ``sendmsg``: none while the
    server holds the request (the client waits for the response) nor after."""
    token = secrets.token_urlsafe(24).encode()
    plain: dict[str, Any] = {}
    direct: dict[str, Any] = {}
    with secret_file(token) as path:
        for how, client in (("http.client", plain), ("sendmsg", direct)):
            with http_server(token, client) as (port, seen):
                client.update(run_child("http", token, client, how=how, port=port, token_path=path))
            assert client["closed"].info["status"] == 200 and len(seen) == 1
            print(how, "in flight:", client["in_flight"].outside())
    assert plain["sending"].outside(), "http.client: the page says it copies the token"
    assert direct["in_flight"].outside() == [], direct["in_flight"].outside()
    assert direct["closed"].hits == [], direct["closed"].hits


# ---------------------------------------------------------------------------------------------
# JWT
# ---------------------------------------------------------------------------------------------


def _verify_hs256(token: str, key: bytes) -> dict[str, Any]:
    """Verify with PyJWT where installed, else by recomputing the tag with the stdlib."""
    if importlib.util.find_spec("jwt") is not None:
        import jwt

        claims: dict[str, Any] = jwt.decode(token, key, algorithms=["HS256"])
        return claims
    import base64

    def unb64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    head, payload, tag = token.split(".")
    assert json.loads(unb64(head)) == {"alg": "HS256", "typ": "JWT"}
    mac = stdlib_hmac.new(key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    if not stdlib_hmac.compare_digest(mac, unb64(tag)):
        raise ValueError("Signature verification failed")
    claims = json.loads(unb64(payload))
    return claims


def test_jwt() -> None:
    """The usage block signs a token that PyJWT (or the stdlib) verifies with the key; the
    same token does not verify under another key."""
    pytest.importorskip("cryptography", reason="securememory.crypto needs the crypto extra")
    key = secrets.token_bytes(32)
    with secret_file(key) as path:
        ns = recipe("recipe-jwt", "recipe-jwt-usage", key_path=path)
    token = ns["token"]
    assert _verify_hs256(token, key) == {"sub": "alice", "exp": 1_900_000_000}
    with pytest.raises(Exception, match=r"[Ss]ignature"):
        _verify_hs256(token, secrets.token_bytes(32))


# ---------------------------------------------------------------------------------------------
# A secrets manager's CLI through a pipe
# ---------------------------------------------------------------------------------------------


def _printf(value: bytes) -> list[str]:
    return ["printf", "%s", value.decode()]


def test_cli_pipe() -> None:
    """The CLI simulated by ``printf``: the value with and without a trailing newline; a value
    too long, an empty one, two lines or a failing command is an error that leaves no secret
    open."""
    import securememory

    key_from_cli = recipe("recipe-cli-pipe")["key_from_cli"]
    key = secrets.token_hex(32).encode()
    before = securememory.stats().live_secrets
    for output in (key, key + b"\n"):
        with key_from_cli(_printf(output), 64) as secret:
            assert secret.with_bytes(bytes) == key
    with key_from_cli(_printf(key[:10]), 64) as secret:  # shorter is fine: it is a line
        assert secret.with_bytes(bytes) == key[:10]
    with pytest.raises(ValueError, match="longer than the maximum of 64"):
        key_from_cli(_printf(key + b"extra"), 64)
    with pytest.raises(ValueError, match="more than one line"):
        key_from_cli(_printf(key + b"\nsecond"), 64)
    with pytest.raises((ValueError, EOFError)):
        key_from_cli(_printf(b"\n"), 64)
    with pytest.raises(subprocess.CalledProcessError):
        key_from_cli(["sh", "-c", 'printf "%s" "$1"; exit 3', "sh", key.decode()], 64)
    assert securememory.stats().live_secrets == before


def test_cli_stdin() -> None:
    """The stdin block as a program, ``printf`` piped into it: it holds the key."""
    key = secrets.token_hex(32).encode()
    program = recipe_blocks()["recipe-cli-stdin"] + (
        "import hashlib\nprint(key.with_bytes(lambda v: hashlib.sha256(v).hexdigest()))\n"
    )
    printf = subprocess.Popen(_printf(key), stdout=subprocess.PIPE)
    assert printf.stdout is not None
    out = subprocess.run(
        [sys.executable, "-c", program], stdin=printf.stdout, capture_output=True, text=True
    )
    printf.stdout.close()
    assert printf.wait() == 0
    assert out.returncode == 0, out.stderr
    assert out.stdout == hashlib.sha256(key).hexdigest() + "\n"


@needs_scan
def test_cli_pipe_copies() -> None:
    """Read with the recipe, the key is only in the secret's own pages while open (secretmem:
    nowhere the scan can read) and nowhere after close; read with ``subprocess.run`` (the
    control), copies are found outside the secret."""
    key = secrets.token_hex(32).encode()
    with secret_file(key) as path:
        control = run_child("cli", key, how="subprocess.run", key_path=path, size=64)
        piped = run_child("cli", key, how="recipe", key_path=path, size=64)
    assert control["open"].hits, "control: the scan finds subprocess.run's bytes"
    assert piped["open"].outside() == [], piped["open"].outside()
    assert piped["closed"].hits == [], piped["closed"].hits


if __name__ == "__main__":
    child_main()
