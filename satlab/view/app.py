"""The Starlette app of ``satlab view``: pages, the runs' data as JSON and live events, files."""

from __future__ import annotations

import html
import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from satlab.live_files import STATUS_FILE, request_stop
from satlab.view.runs import FileRefused, Run, RunFolders, safe_file
from satlab.view.security import CSRF_HEADER, AccessGuard, new_secret, same_origin, same_token
from satlab.view.status import read_status
from satlab.view.watch import RunWatcher, index_entry, run_state, unreadable

STOPPING = "the run stops at its next step (or, while it evaluates, at the next evaluation point)"
POLL_SECONDS = 0.5  # how often a live page's files are looked at: 2 Hz
PING_SECONDS = 15  # a comment line keeps idle connections (and proxies) from timing out
STATIC = {  # the page's own files, by the only names served
    "view.css": "text/css", "run.js": "text/javascript", "index.js": "text/javascript",
}


@cache
def _package_text(folder: str, name: str) -> str:
    return (files("satlab.view") / folder / name).read_text(encoding="utf-8")


@cache
def _plotly_js() -> tuple[bytes, str]:
    """plotly.js as the installed plotly package ships it (no CDN), and its version."""
    import plotly
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode(), plotly.__version__


def _page(name: str, **values: str) -> HTMLResponse:
    """A page template with its values HTML-escaped in."""
    escaped = {k: html.escape(v, quote=True) for k, v in values.items()}
    escaped["plotly_version"] = html.escape(_plotly_js()[1])
    return HTMLResponse(Template(_package_text("templates", name)).substitute(escaped))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _event_data(change: dict) -> str:
    return json.dumps(change, allow_nan=False, separators=(",", ":"))


def _index_entry(run: Run) -> dict[str, Any]:
    """The run's line of the index; one whose files cannot be read is listed with a note."""
    try:
        return index_entry(run)
    except Exception as exc:  # noqa: BLE001 (one run's files never take the index down)
        return {"id": run.id, "methods": [], "state": "unknown", "can_stop": False,
                "note": unreadable(exc), "updated": None, "accuracy": {}}


def create_app(paths: list[Path], token: str | None = None, poll_seconds: float = POLL_SECONDS) -> Any:
    """The ASGI app serving the runs in ``paths`` (run folders or folders of runs); ``token``
    (with --allow-remote) admits other machines that present it."""
    folders = RunFolders(paths)
    csrf = new_secret()  # per server: a page of this server carries it, no other site can

    def known(request: Request) -> Run | None:
        return folders.get(request.path_params["run_id"])

    async def index(request: Request) -> Response:
        return _page("index.html", folders=", ".join(map(str, folders.paths)))

    async def run_page(request: Request) -> Response:
        run = known(request)
        if run is None:
            return HTMLResponse("<!doctype html><title>no such run</title><p>No such run.</p>", 404)
        return _page("run.html", run=run.id, csrf=csrf)

    async def api_runs(request: Request) -> Response:
        entries = await anyio.to_thread.run_sync(lambda: [_index_entry(r) for r in folders.runs()])
        return JSONResponse({"folders": [str(p) for p in folders.paths], "runs": entries})

    async def api_run(request: Request) -> Response:
        run = known(request)
        if run is None:
            return _error(404, "no such run")
        watcher = RunWatcher(run)
        try:
            return JSONResponse(await anyio.to_thread.run_sync(watcher.poll))
        except Exception as exc:  # noqa: BLE001 (as the events say it: a note, not a broken page)
            return JSONResponse(watcher.failed(exc))

    async def events(request: Request) -> Response:
        run = known(request)
        if run is None:
            return _error(404, "no such run")
        watcher = RunWatcher(run)

        async def stream():
            while True:
                try:
                    change = await anyio.to_thread.run_sync(watcher.poll)
                    data = None if change is None else _event_data(change)
                except Exception as exc:  # noqa: BLE001 (the folder moved, a file no check foresaw:
                    change = watcher.failed(exc)  # the page says so, and the stream goes on)
                    data = None if change is None else _event_data(change)
                if data is not None:
                    yield {"event": "update", "data": data}
                await anyio.sleep(poll_seconds)

        return EventSourceResponse(stream(), ping=PING_SECONDS)

    async def stop(request: Request) -> Response:
        run = known(request)
        if run is None:
            return _error(404, "no such run")
        if not same_token(request.headers.get(CSRF_HEADER), csrf) or \
                not same_origin(request.headers, request.url.scheme):
            return _error(403, "a stop request must come from this server's run page")
        status, note = read_status(run.live / STATUS_FILE)
        state = run_state(status, note, finished=False)
        if not state["can_stop"]:
            return _error(409, f"the run is {state['state']}: nothing to stop")
        live = run.live
        if live.is_symlink() or (live.exists() and not live.resolve().is_relative_to(run.path)):
            return _error(403, "the run's live folder is outside the run")
        try:
            await anyio.to_thread.run_sync(request_stop, run.path)
        except OSError as exc:
            return _error(500, f"the stop request could not be written: {exc.strerror or exc}")
        return JSONResponse({"stopping": True, "message": STOPPING})

    async def run_file(request: Request) -> Response:
        run = known(request)
        if run is None:
            return _error(404, "no such run")
        try:
            path = safe_file(run, request.path_params["path"])
        except FileRefused as exc:
            return _error(exc.status, str(exc))
        return FileResponse(path)

    async def plotly_js(request: Request) -> Response:
        body, _ = _plotly_js()
        return Response(body, media_type="text/javascript",
                        headers={"cache-control": "public, max-age=86400"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _error(404, "no such file")
        return Response(_package_text("static", name), media_type=STATIC[name])

    app = Starlette(routes=[
        Route("/", index),
        Route("/run/{run_id}", run_page),
        Route("/api/runs", api_runs),
        Route("/api/run/{run_id}", api_run),
        Route("/api/run/{run_id}/events", events),
        Route("/api/run/{run_id}/stop", stop, methods=["POST"]),
        Route("/files/{run_id}/{path:path}", run_file),
        Route("/static/plotly.min.js", plotly_js),
        Route("/static/{name}", static),
    ])
    return AccessGuard(app, token)
