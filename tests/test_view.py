"""`satlab view`: the runs it lists, the files it refuses, who it admits, live events, stopping."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import anyio
import pytest
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, tiny_config, write_yaml
from starlette.testclient import TestClient

from satlab.cli import main
from satlab.live_files import LIVE_DIR, STATUS_FILE, STOP_FILE
from satlab.view import runs as run_files
from satlab.view import status as status_module
from satlab.view.app import create_app
from satlab.view.runs import Run
from satlab.view.security import AccessGuard
from satlab.view.status import normalize

LOCAL = {"base_url": "http://127.0.0.1:8765", "client": ("127.0.0.1", 50000)}
TOKEN = "a-token-of-enough-length"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder of runs holding one run made by `satlab train` (SAT and plain, tiny)."""
    root = tmp_path_factory.mktemp("view")
    config = write_yaml(root / "tiny.yaml", tiny_config(TWO_LAYER_RIG))
    run = root / "runs" / "tiny-run"
    done = subprocess.run([SATLAB, "train", str(config), "--run-dir", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return root / "runs"


@pytest.fixture
def runs(trained, tmp_path) -> Path:
    """A copy of the trained runs folder that a test may change."""
    copy = tmp_path / "runs"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def local(app) -> TestClient:
    return TestClient(app, **LOCAL)


def running_status(**extra) -> dict:
    """A status.json of a live run of this process (so its pid is alive)."""
    return {"version": 1, "pid": os.getpid(), "host": socket.gethostname(), "run": "tiny-run",
            "method": "sat", "estimator": "spsa", "state": "running", "epoch": 0, "step": 3,
            "steps_per_epoch": 5, "epochs": 1, "loss": 2.1, "accuracy": 0.25, "rig_queries": 60,
            "layers": [{"name": "fc2", "quantity": "current", "unit": "A", "queries": 30,
                        "controls": {"rows": 2, "cols": 2, "fraction": [0, 0.5, 1, 0.25],
                                     "lower": 0, "upper": 0.024},
                        "power": {"used": 1.5, "budget": 8.0, "unit": "W"}, "knobs": []}],
            "instruments": {"heaters_fc2": {"identity": "sim", "fault": None}}, **extra}


def write_status(run: Path, status) -> Path:
    live = run / LIVE_DIR
    live.mkdir(exist_ok=True)
    path = live / STATUS_FILE
    path.write_bytes(status if isinstance(status, bytes) else json.dumps(status).encode())
    return path


def csrf_of(client: TestClient, run_id: str) -> str:
    page = client.get(f"/run/{run_id}")
    assert page.status_code == 200
    return re.search(r'<meta name="satlab-csrf" content="([^"]+)">', page.text)[1]


def strict_json(text: str):
    """JSON as browsers parse it: NaN or Infinity would be an error."""
    def refuse(word):
        raise ValueError(f"{word} is not JSON")
    return json.loads(text, parse_constant=refuse)


def raw_request(app, raw_path: str, query: bytes = b"", kind: str = "http",
                client: tuple[str, int] = ("127.0.0.1", 50000), host: str = "127.0.0.1:8765",
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> list[dict]:
    """The ASGI messages ``app`` sends for a GET (or a websocket opening) of ``raw_path`` exactly
    as given: no HTTP client in between to resolve dot segments or merge slashes (uvicorn does
    neither: it passes the path on as sent)."""
    scope = {"type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http" if kind == "http" else "ws", "path": unquote(raw_path),
             "raw_path": raw_path.encode("latin-1"), "root_path": "", "query_string": query,
             "headers": [(b"host", host.encode()), *headers], "client": client,
             "server": ("127.0.0.1", 8765), "subprotocols": []}
    sent: list[dict] = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}] if kind == "http" else \
        [{"type": "websocket.connect"}]

    async def receive() -> dict:  # the request; then a client that waits for the answer
        if incoming:
            return incoming.pop(0)
        if kind == "http":
            await anyio.sleep_forever()  # a response listening for one is cancelled once sent
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    return sent


def answer_of(messages: list[dict]) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the HTTP response in ASGI messages."""
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], headers, body


@contextmanager
def viewer(*args: str, env: dict | None = None):
    """`satlab view ARGS --port 0` running; yields the address it printed and its port. Ctrl-C
    ends it, with code 0."""
    proc = subprocess.Popen([SATLAB, "view", *args, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        found = re.search(r"(http://[^/\s]+:(\d+)/)", line)
        assert found, line + proc.stderr.read()
        yield found[1], int(found[2])
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out


def http_get(address: str, port: int, path: str, headers: dict[str, str]) -> int:
    """The status of a GET of ``path`` sent as it is, to ``address:port``."""
    connection = http.client.HTTPConnection(address, port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


# --- the index ---------------------------------------------------------------------------

def test_index_lists_the_runs_training_made(trained):
    summaries = {m: json.loads((trained / "tiny-run" / m / "summary.json").read_text())
                 for m in ("sat", "plain")}
    with local(create_app([trained])) as client:
        assert "satlab runs" in client.get("/").text
        listed = client.get("/api/runs").json()["runs"]
    (run,) = listed
    assert run["id"] == "tiny-run" and run["methods"] == ["sat", "plain"]
    assert run["state"] == "finished" and not run["can_stop"]
    assert run["accuracy"] == {m: s["test_accuracy"] for m, s in summaries.items()}
    assert run["updated"] > 0


def test_a_run_folder_given_itself_and_a_live_run_are_listed(runs):
    live = runs.parent / "elsewhere" / "live-run"
    shutil.copytree(runs / "tiny-run", live)
    write_status(live, running_status())
    with local(create_app([runs, live])) as client:
        listed = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
        page = client.get("/run/live-run").text
    assert set(listed) == {"tiny-run", "live-run"}
    assert listed["live-run"]["state"] == "running" and listed["live-run"]["can_stop"]
    assert 'content="live-run"' in page


def test_the_run_page_shows_the_runs_files(trained):
    with local(create_app([trained])) as client:
        page = client.get("/run/tiny-run")
        first = client.get("/api/run/tiny-run").json()
        report = client.get(first["images"][0]["url"])
        missing = client.get("/run/no-such-run")
    assert page.status_code == 200 and "loss-plot" in page.text
    assert "/static/plotly.min.js" in page.text and "cdn" not in page.text.lower()
    rows = len((trained / "tiny-run" / "sat" / "metrics.csv").read_text().splitlines()) - 1
    assert len(first["metrics"]["sat"]["loss"]) == rows
    assert first["metrics"]["sat"]["x"] == list(range(1, rows + 1))  # log_every 1: every step
    assert first["summaries"]["plain"]["test_accuracy"] >= 0
    assert report.status_code == 200 and report.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert missing.status_code == 404


def test_plotly_is_served_from_the_installed_package(trained):
    from plotly.offline import get_plotlyjs

    with local(create_app([trained])) as client:
        js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and js.text == get_plotlyjs()


# --- files: nothing outside a run folder ----------------------------------------------------

@pytest.mark.parametrize("path", [
    "%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "sat/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",  # //etc/passwd after the run id
    "%2fetc%2fpasswd",
    "..%5c..%5cetc%5cpasswd",
])
def test_paths_out_of_the_run_are_refused(trained, path):
    with local(create_app([trained])) as client:
        answer = client.get(f"/files/tiny-run/{path}")
    assert answer.status_code == 403, answer.text
    assert "root:" not in answer.text


@pytest.mark.parametrize("path", [
    "../../etc/passwd",
    "../../../../../../etc/passwd",
    "sat/../../../etc/passwd",
    "sat/../report.png",  # resolves inside the run, but names no file of it as it stands
    "./../report.png",
])
def test_dot_segments_as_sent_are_refused(trained, path):
    """Dots that reach the server (a browser or httpx would resolve them first; curl
    --path-as-is or a script does not)."""
    app = create_app([trained])
    status, _, body = answer_of(raw_request(app, f"/files/tiny-run/{path}"))
    assert status == 403, body
    assert b"outside the run folder" in body and b"root:" not in body
    # the same request without the dots is served: the dots, not the route, were refused
    status, _, body = answer_of(raw_request(app, "/files/tiny-run/report.png"))
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_id_is_never_a_path(trained):
    with local(create_app([trained])) as client:
        for url in ("/files/..%2f..%2fetc/passwd", "/files/%2e%2e/etc/passwd", "/api/run/..%2f.."):
            answer = client.get(url)
            assert answer.status_code == 404, url
            assert "root:" not in answer.text


def test_a_symlink_out_of_the_run_is_refused(runs, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "plot.png").write_bytes(b"\x89PNG secret")
    run = runs / "tiny-run"
    (run / "leak.png").symlink_to(secret / "plot.png")
    (run / "linked").symlink_to(secret)
    (run / "inside.png").symlink_to(run / "report.png")  # a link within the run is fine
    with local(create_app([runs])) as client:
        for url in ("/files/tiny-run/leak.png", "/files/tiny-run/linked/plot.png"):
            answer = client.get(url)
            assert answer.status_code == 403, url
            assert b"secret" not in answer.content
        assert client.get("/files/tiny-run/inside.png").status_code == 200
        # files the page does not show are not served, even inside the run
        assert client.get("/files/tiny-run/sat/checkpoint.pt").status_code == 404


def test_a_symlinked_run_folder_is_not_a_run(runs, tmp_path):
    outside = tmp_path / "outside-run"
    shutil.copytree(runs / "tiny-run", outside)
    (runs / "linked-run").symlink_to(outside)
    with local(create_app([runs])) as client:
        ids = [r["id"] for r in client.get("/api/runs").json()["runs"]]
        assert ids == ["tiny-run"]
        assert client.get("/files/linked-run/report.png").status_code == 404


# --- who is admitted ----------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/", "/api/runs", "/run/tiny-run", "/api/run/tiny-run",
                                 "/files/tiny-run/report.png", "/static/plotly.min.js"])
def test_another_machine_is_refused_without_allow_remote(trained, url):
    remote = TestClient(create_app([trained]), base_url="http://labpc:8765", client=("10.0.0.2", 1234))
    answer = remote.get(url, headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 403
    assert "forbidden" in answer.text


def test_a_local_client_naming_another_host_is_refused(trained):
    """DNS rebinding: a site whose name points at 127.0.0.1 reads nothing through the browser."""
    client = TestClient(create_app([trained]), base_url="http://evil.example:8765",
                        client=("127.0.0.1", 50000))
    assert client.get("/api/runs").status_code == 403
    for host in ("localhost:8765", "[::1]:8765", "127.0.0.1"):
        assert client.get("/api/runs", headers={"host": host}).status_code == 200, host


def test_another_machine_is_admitted_with_the_token(trained):
    app = create_app([trained], token=TOKEN)
    remote = TestClient(app, base_url="http://labpc:8765", client=("10.0.0.2", 1234),
                        follow_redirects=False)
    assert remote.get("/api/runs").status_code == 403
    assert remote.get("/api/runs?token=wrong-token-of-enough-length").status_code == 403
    assert remote.get("/api/runs", headers={"authorization": "Bearer nope"}).status_code == 403
    assert remote.get("/api/runs", headers={"cookie": 'satlab_view_token="\\x'}).status_code == 403
    # the token once in the address: a cookie, and an address without it
    first = remote.get("/run/tiny-run?token=" + TOKEN)
    assert first.status_code == 303 and first.headers["location"] == "/run/tiny-run"
    assert "httponly" in first.headers["set-cookie"].lower()
    assert remote.get("/run/tiny-run").status_code == 200  # the client kept the cookie
    assert remote.get("/api/run/tiny-run").status_code == 200
    bearer = TestClient(app, base_url="http://labpc:8765", client=("10.0.0.2", 1234))
    assert bearer.get("/api/runs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("raw_path,location", [
    ("//evil.example/run/tiny-run", "/evil.example/run/tiny-run"),
    ("/\\evil.example/run/tiny-run", "/evil.example/run/tiny-run"),
    ("/\\/evil.example", "/evil.example"),
    ("\\\\evil.example", "/evil.example"),
    ("///\\\\evil.example/", "/evil.example/"),
    ("/run/tiny-run", "/run/tiny-run"),
])
def test_the_token_redirect_stays_on_this_server(trained, raw_path, location):
    """The Location of the ?token= redirect is a path of this server, whatever path was sent:
    //host or /\\host there would send the browser to another site (an open redirect)."""
    app = create_app([trained], token=TOKEN)
    status, headers, _ = answer_of(raw_request(
        app, raw_path, query=f"a=1&token={TOKEN}&b=".encode(), client=("10.0.0.2", 1234),
        host="labpc:8765"))
    assert status == 303
    assert headers["location"] == f"{location}?a=1&b="
    assert "set-cookie" in headers


async def accept(scope, receive, send) -> None:
    """An app that accepts every websocket."""
    await send({"type": "websocket.accept"})


@pytest.mark.parametrize("client,host,headers,admitted", [
    (("127.0.0.1", 50000), "127.0.0.1:8765", (), True),
    (("127.0.0.1", 50000), "127.0.0.1:8765", ((b"origin", b"http://127.0.0.1:8765"),), True),
    (("127.0.0.1", 50000), "127.0.0.1:8765", ((b"origin", b"http://evil.example"),), False),
    (("127.0.0.1", 50000), "evil.example:8765", (), False),  # DNS rebinding
    (("10.0.0.2", 1234), "labpc:8765", (), False),
    (("10.0.0.2", 1234), "labpc:8765", ((b"cookie", f"satlab_view_token={TOKEN}".encode()),), True),
    (("10.0.0.2", 1234), "labpc:8765", ((b"authorization", f"Bearer {TOKEN}".encode()),), True),
    (("10.0.0.2", 1234), "labpc:8765", ((b"authorization", b"Bearer not-the-token-at-all"),), False),
])
def test_websockets_are_admitted_as_requests_are(client, host, headers, admitted):
    sent = raw_request(AccessGuard(accept, TOKEN), "/ws", kind="websocket", client=client,
                       host=host, headers=headers)
    if admitted:
        assert sent == [{"type": "websocket.accept"}]
    else:
        assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]


def test_websockets_from_another_machine_are_refused_without_allow_remote(trained):
    sent = raw_request(create_app([trained]), "/ws", kind="websocket", client=("10.0.0.2", 1234),
                       host="labpc:8765", headers=((b"authorization", f"Bearer {TOKEN}".encode()),))
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]


def test_pages_carry_the_security_headers(trained):
    with local(create_app([trained])) as client:
        page = client.get("/run/tiny-run")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"


# --- status.json as it may be found ------------------------------------------------------------

HUGE = b"1" + b"0" * 400  # an integer literal no float holds: float() raises OverflowError

# each case: the file, and the status the page gets from it (None: unreadable, a note says why)
BROKEN_STATUS = {
    "empty": (b"", None),
    "half written": (json.dumps(running_status())[:57].encode(), None),
    "truncated object": (b'{"state": "running", "layers": [{"name": "fc2", "controls": {"fraction": [0.1,',
                         None),
    "not json": (b"\xff\xfe garbage \x00", None),
    "a list": (b"[1, 2, 3]", None),
    "null": (b"null", None),
    "deep": (b"[" * 100000, None),
    "an integer beyond the parser's digits": (b'{"state": "running", "loss": ' + b"1" * 5000 + b"}",
                                              None),
    "huge integers": (
        b'{"state": "running", "epoch": 2, "loss": ' + HUGE + b', "accuracy": -' + HUGE
        + b', "updated": ' + HUGE + b', "wall_seconds": ' + HUGE + b'.5, "layers": [{"controls": '
        b'{"fraction": [' + HUGE + b', 0.5], "upper": ' + HUGE + b'}}], '
        b'"detectors": {"pd": {"values": [' + HUGE + b", 1.5]}}}",
        {"state": "running", "epoch": 2, "layers": [{"controls": {"fraction": [None, 0.5]}}],
         "detectors": {"pd": {"values": [None, 1.5]}}}),
    "wrong types": (json.dumps({
        "state": 5, "epoch": "three", "layers": "fc2", "detectors": [1, 2], "camera": {"regions": "x"},
        "commands": {"a": 1}, "instruments": [1], "loss": True, "error": ["x"]}).encode(),
        {"camera": {}}),
    "wrong nested types": (json.dumps({
        "state": "running", "layers": [1, "x", {"controls": {"fraction": "x", "rows": 1.5},
                                               "knobs": [{"travel": [1]}, 3], "power": []}],
        "detectors": {"pd": {"values": "x"}, "pd2": 3}, "camera": {"regions": [[1, 2], "x"]},
        "instruments": {"a": {"fault": 3}}, "commands": [None, {"time": "now"}]}).encode(),
        {"state": "running", "layers": [{"controls": {}, "knobs": [{}], "power": {}}],
         "detectors": {"pd": {}}, "camera": {"regions": []}, "instruments": {"a": {}},
         "commands": [{}]}),
    "non-finite numbers": (
        (b'{"state": "running", "loss": NaN, "accuracy": Infinity, '
         b'"layers": [{"controls": {"fraction": [NaN, -Infinity, 2, -1, 0.5]}}]}'),
        {"state": "running", "layers": [{"controls": {"fraction": [None, None, 1.0, 0.0, 0.5]}}]}),
}


@pytest.mark.parametrize("case", list(BROKEN_STATUS))
def test_a_broken_status_file_never_breaks_the_page(runs, case):
    content, kept = BROKEN_STATUS[case]
    write_status(runs / "tiny-run", content)
    with TestClient(create_app([runs]), raise_server_exceptions=False, **LOCAL) as client:
        for url in ("/", "/run/tiny-run", "/api/runs", "/api/run/tiny-run"):
            answer = client.get(url)
            assert answer.status_code == 200, (url, answer.text)
        (listed,) = strict_json(client.get("/api/runs").text)["runs"]
        shown = strict_json(client.get("/api/run/tiny-run").text)
    assert listed["id"] == "tiny-run"
    assert len(shown["metrics"]["sat"]["loss"]) > 0  # the rest of the run is still shown
    if kept is None:  # unreadable: a note says why, the state comes from the run's other files
        assert shown["status"]["status"] == {}
        assert shown["status"]["note"].startswith(STATUS_FILE)
        assert listed["note"] == shown["status"]["note"]
        assert listed["state"] == shown["status"]["state"] == "finished"
    else:  # its well-typed part, and nothing else
        assert shown["status"]["status"] == kept
        assert listed["note"] is shown["status"]["note"] is None
        assert listed["state"] == shown["status"]["state"] == kept.get("state", "finished")


def test_a_status_no_check_foresaw_is_a_note_not_an_error(runs, monkeypatch):
    def unforeseen(value):
        raise ArithmeticError("a case nobody thought of")

    monkeypatch.setitem(status_module.STATUS, "loss", unforeseen)
    write_status(runs / "tiny-run", running_status())
    with TestClient(create_app([runs]), raise_server_exceptions=False, **LOCAL) as client:
        index, page = client.get("/api/runs"), client.get("/api/run/tiny-run")
    assert index.status_code == page.status_code == 200
    (listed,) = index.json()["runs"]
    assert listed["id"] == "tiny-run"
    assert listed["note"] == \
        f"{STATUS_FILE} could not be read: ArithmeticError: a case nobody thought of"
    assert page.json()["status"]["note"] == listed["note"]


@pytest.mark.parametrize("config", [
    b"training:\n  methods: " + b"[" * 5000 + b"]" * 5000 + b"\n",  # deeper than yaml recurses
    b"training:\n  methods: " + b"{a: " * 2000 + b"}" * 2000 + b"\n",
    b"training: {methods: [sat, plain]\n",
    b"\xff\xfe not text",
    b"training: [1, 2]\n",
    b"training:\n  methods: &a [*a]\n",
])
def test_a_broken_config_never_breaks_the_page(runs, config):
    (runs / "tiny-run" / "config.yaml").write_bytes(config)
    with TestClient(create_app([runs]), raise_server_exceptions=False, **LOCAL) as client:
        index, page = client.get("/api/runs"), client.get("/api/run/tiny-run")
    assert index.status_code == 200, index.text
    assert page.status_code == 200, page.text
    (listed,) = index.json()["runs"]
    # the methods are then the folders with metrics or a summary
    assert listed["id"] == "tiny-run" and listed["methods"] == ["plain", "sat"]
    assert page.json()["methods"] == ["plain", "sat"]


def test_the_config_is_parsed_again_only_when_it_changes(runs, monkeypatch):
    parses = []
    parse = run_files._parse_methods
    monkeypatch.setattr(run_files, "_parse_methods",
                        lambda data: parses.append(data) or parse(data))
    run = Run("tiny-run", (runs / "tiny-run").resolve())
    config = run.path / "config.yaml"
    for _ in range(3):
        assert run_files.methods(run) == ["sat", "plain"]
    with local(create_app([runs], poll_seconds=0.05)) as client:  # the index, a page, its events
        assert client.get("/api/runs").json()["runs"][0]["methods"] == ["sat", "plain"]
        assert client.get("/api/run/tiny-run").json()["methods"] == ["sat", "plain"]
        events = Events(client, "/api/run/tiny-run/events")
        try:
            events.next()
            time.sleep(0.3)  # several polls
        finally:
            events.close()
    assert len(parses) == 1
    # rewritten, same size: a new modification time is enough
    cfg = yaml.safe_load(config.read_text())
    cfg["training"]["methods"] = ["plain", "sat"]
    before = config.stat()
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert config.stat().st_size == before.st_size
    assert run_files.methods(run) == ["plain", "sat"]
    assert len(parses) == 2
    # another size, the same modification time: parsed again too
    cfg["training"]["methods"] = ["sat"]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert run_files.methods(run) == ["sat", "plain"]  # plain: its folder holds its metrics
    assert len(parses) == 3
    assert run_files.methods(run) == ["sat", "plain"]
    assert len(parses) == 3


def test_the_well_typed_part_of_a_status_is_kept():
    status = normalize({"state": "running", "epoch": 3, "loss": "x", "accuracy": float("nan"),
                        "layers": [{"name": "fc", "controls": {"fraction": [0.5, float("nan"), 2, -1],
                                                               "rows": True}}, 7],
                        "commands": [{"time": float(i), "action": "set"} for i in range(80)]})
    assert status["state"] == "running" and status["epoch"] == 3
    assert "loss" not in status and "accuracy" not in status
    assert status["layers"][0] == {"name": "fc", "controls": {"fraction": [0.5, None, 1.0, 0.0]}}
    assert len(status["layers"]) == 1
    assert [c["time"] for c in status["commands"]] == [float(i) for i in range(30, 80)]  # the tail


def test_a_status_of_a_process_that_is_gone_offers_no_stop(runs):
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_status(runs / "tiny-run", running_status(pid=dead.pid))
    with local(create_app([runs])) as client:
        (run,) = client.get("/api/runs").json()["runs"]
    assert run["state"] == "gone" and not run["can_stop"]


# --- live events -----------------------------------------------------------------------------

class Events:
    """The update events of one SSE stream, read in a thread so a test can wait with a timeout."""

    def __init__(self, client: TestClient, url: str) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._context = client.stream("GET", url)
        self.response = self._context.__enter__()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line.startswith("data:"):
                    self.queue.put(strict_json(line[5:].strip()))
        except Exception as exc:  # noqa: BLE001 (closing the stream ends the read)
            self.queue.put(exc)

    def next(self, timeout: float = 20) -> dict:
        event = self.queue.get(timeout=timeout)
        assert not isinstance(event, Exception), event
        return event

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def test_events_send_the_status_and_new_metrics_rows_when_files_change(runs):
    run = runs / "tiny-run"
    status_path = write_status(run, running_status(step=3))
    metrics = run / "sat" / "metrics.csv"
    rows = len(metrics.read_text().splitlines()) - 1
    with local(create_app([runs], poll_seconds=0.05)) as client:
        events = Events(client, "/api/run/tiny-run/events")
        try:
            assert events.response.headers["content-type"].startswith("text/event-stream")
            first = events.next()
            assert first["reset"] and first["status"]["state"] == "running"
            assert first["status"]["status"]["step"] == 3 and first["status"]["can_stop"]
            assert len(first["metrics"]["sat"]["loss"]) == rows
            # a row being written is held back until its line ends; the status moves on
            with open(metrics, "a") as f:
                f.write("0,5,1.234500,0.5000,999,1.000,2.000\n0,6,1.1")
            status_path.write_text(json.dumps(running_status(step=5)))
            change = events.next()
            assert not change["reset"]
            assert change["status"]["status"]["step"] == 5
            assert change["metrics"] == {"sat": {
                "start": rows, "x": [6], "epoch": [0], "step": [5], "loss": [1.2345],
                "accuracy": [0.5], "rig_queries": [999], "rig_seconds": [1.0], "wall_seconds": [2.0]}}
            assert "summaries" not in change and "images" not in change  # unchanged: not sent
            with open(metrics, "a") as f:
                f.write("00000,0.4000,1000,1.100,2.100\n")
            change = events.next()
            assert set(change) == {"reset", "run", "metrics"}  # only the row: the status is as it was
            assert change["metrics"]["sat"]["start"] == rows + 1
            assert change["metrics"]["sat"]["loss"] == [1.1]
        finally:
            events.close()


def test_events_start_over_when_a_resume_cuts_the_metrics_back(runs):
    metrics = runs / "tiny-run" / "sat" / "metrics.csv"
    lines = metrics.read_text().splitlines(keepends=True)
    with local(create_app([runs], poll_seconds=0.05)) as client:
        events = Events(client, "/api/run/tiny-run/events")
        try:
            assert len(events.next()["metrics"]["sat"]["loss"]) == len(lines) - 1
            metrics.write_text("".join(lines[:3]) + "0,2,9.000000,0.1000,1,0.1,0.1\n")
            change = events.next()
            assert change["metrics"]["sat"]["start"] == 0
            assert change["metrics"]["sat"]["loss"][-1] == 9.0 and len(change["metrics"]["sat"]["loss"]) == 3
        finally:
            events.close()


def test_events_carry_a_status_with_huge_integers(runs):
    run = runs / "tiny-run"
    content, kept = BROKEN_STATUS["huge integers"]
    write_status(run, content)
    with local(create_app([runs], poll_seconds=0.05)) as client:
        events = Events(client, "/api/run/tiny-run/events")
        try:
            first = events.next()
            assert first["reset"] and first["status"]["state"] == "running"
            assert first["status"]["status"] == kept and first["status"]["note"] is None
            assert len(first["metrics"]["sat"]["loss"]) > 0
            write_status(run, running_status(step=4))  # the stream goes on
            assert events.next()["status"]["status"]["step"] == 4
        finally:
            events.close()


def test_events_say_when_the_files_cannot_be_read_and_go_on(runs, monkeypatch):
    write_status(runs / "tiny-run", running_status(step=3))
    with local(create_app([runs], poll_seconds=0.05)) as client:
        events = Events(client, "/api/run/tiny-run/events")
        try:
            assert events.next()["status"]["state"] == "running"

            def unreadable(run):
                raise RuntimeError("a file no check foresaw")

            monkeypatch.setattr(run_files, "methods", unreadable)
            failed = events.next()
            assert set(failed) == {"reset", "run", "status"} and not failed["reset"]
            assert failed["status"]["note"] == \
                "the run's files could not be read: RuntimeError: a file no check foresaw"
            assert failed["status"]["state"] == "running"  # as last shown
            assert failed["status"]["status"]["step"] == 3
            time.sleep(0.3)  # several failed polls: the note is sent once
            monkeypatch.undo()
            back = events.next()  # everything again, without the note
            assert back["reset"] and back["status"]["note"] is None
            assert back["methods"] == ["sat", "plain"] and len(back["metrics"]["sat"]["loss"]) > 0
        finally:
            events.close()


# --- stopping ----------------------------------------------------------------------------------

def test_stop_needs_the_pages_token_and_a_post(runs):
    run = runs / "tiny-run"
    write_status(run, running_status())
    stop = run / LIVE_DIR / STOP_FILE
    with local(create_app([runs])) as client:
        token = csrf_of(client, "tiny-run")
        url = "/api/run/tiny-run/stop"
        assert client.get(url).status_code == 405
        assert client.post(url).status_code == 403
        assert client.post(url, headers={"x-satlab-csrf": "forged"}).status_code == 403
        assert client.post(url, headers={"x-satlab-csrf": token,
                                         "origin": "http://evil.example"}).status_code == 403
        assert client.post(url, headers={"x-satlab-csrf": token,
                                         "sec-fetch-site": "cross-site"}).status_code == 403
        assert client.post("/api/run/no-such-run/stop", headers={"x-satlab-csrf": token}).status_code == 404
        assert not stop.exists()
        other_server = csrf_of(local(create_app([runs])), "tiny-run")  # a token is per server
        assert client.post(url, headers={"x-satlab-csrf": other_server}).status_code == 403
        assert not stop.exists()
        done = client.post(url, headers={"x-satlab-csrf": token, "origin": "http://127.0.0.1:8765",
                                         "sec-fetch-site": "same-origin"})
    assert done.status_code == 200, done.text
    assert done.json()["stopping"] and stop.exists()
    assert done.json()["message"] == ("the run stops at its next step (or, while it evaluates, "
                                      "at the next evaluation point)")


@pytest.mark.parametrize("state", ["finished", "interrupted", "failed", None])
def test_stop_refuses_a_run_that_is_not_running(runs, state):
    run = runs / "tiny-run"
    if state:
        write_status(run, running_status(state=state))
    else:  # no live status at all (a run of an older satlab): its state is unknown
        shutil.rmtree(run / LIVE_DIR)
    with local(create_app([runs])) as client:
        answer = client.post("/api/run/tiny-run/stop",
                             headers={"x-satlab-csrf": csrf_of(client, "tiny-run")})
    assert answer.status_code == 409
    assert answer.json()["error"] == f"the run is {state or 'unknown'}: nothing to stop"
    assert not (run / LIVE_DIR / STOP_FILE).exists()


# --- the command ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--host", "0.0.0.0", "--port", "0"], "--host: 0.0.0.0 is reachable from other machines"),
    (["--host", "0.0.0.0", "--allow-remote"], "--allow-remote: and --token TOKEN go together"),
    (["--host", "0.0.0.0", "--token", TOKEN], "--allow-remote: and --token TOKEN go together"),
    (["--host", "0.0.0.0", "--allow-remote", "--token", "short"], "--token: expected at least 16"),
])
def test_view_refuses_to_listen_beyond_this_machine_without_both_flags(trained, capsys, args, expected):
    assert main(["view", str(trained), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1


def test_view_judges_the_address_it_bound_not_the_name_given(trained, capsys, monkeypatch):
    import satlab.view.server as server

    bound = []

    def bind_everywhere(host, port):  # a name that resolves to every interface
        sock = real_bind("0.0.0.0", port)
        bound.append(sock)
        return sock

    def serve(app, sock):  # reached only if the bound address were judged local
        raise AssertionError("served on every interface")

    real_bind = server.bind
    monkeypatch.setattr(server, "bind", bind_everywhere)
    monkeypatch.setattr(server, "serve", serve)
    assert main(["view", str(trained), "--host", "lab.localhost", "--port", "0"]) == 2
    assert "--host: lab.localhost is reachable from other machines" in capsys.readouterr().err
    assert bound and bound[0].fileno() == -1  # closed again


def test_view_refuses_a_folder_that_is_not_there(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_view_serves_until_ctrl_c(trained):
    with viewer(str(trained)) as (address, port):
        assert address == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(address + "api/runs", timeout=10) as answer:
            assert json.loads(answer.read())["runs"][0]["id"] == "tiny-run"
        # uvicorn hands the path on as sent: dots reach the app, which refuses them
        assert http_get("127.0.0.1", port, "/files/tiny-run/sat/../report.png", {}) == 403
        assert http_get("127.0.0.1", port, "/files/tiny-run/report.png", {}) == 200
        taken = subprocess.run([SATLAB, "view", str(trained), "--port", str(port)],
                               capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2 and "cannot listen there" in taken.stderr


REMOTE_VIEW = ("--host", "0.0.0.0", "--allow-remote", "--token", TOKEN)
TRUST_EVERY_PROXY = {"FORWARDED_ALLOW_IPS": "*"}  # uvicorn's proxy headers would trust anyone


def test_forwarded_for_never_replaces_the_clients_address(trained):
    """A real server told to trust every proxy still judges the client by its own address:
    believed, the header would make this loopback client remote (and refused without the
    token), as it would make a remote client claiming 127.0.0.1 local."""
    with viewer(str(trained), *REMOTE_VIEW, env={**os.environ, **TRUST_EVERY_PROXY}) as (_, port):
        assert http_get("127.0.0.1", port, "/api/runs", {"host": f"127.0.0.1:{port}"}) == 200
        assert http_get("127.0.0.1", port, "/api/runs", {"host": f"127.0.0.1:{port}",
                                                         "x-forwarded-for": "10.0.0.2"}) == 200
