"""The dashboard's web app: a small ASGI app (Starlette) serving one page, its script and style, Plotly's bundled
plotly.min.js (from the plotly package: no CDN, no internet), and read-only JSON views of runs.py.

Safe by default: read-only (GET and HEAD only; every other method is refused with 405); with a token, every
request must carry it (an `Authorization: Bearer` header, or the cookie a `?token=` link sets, compared in
constant time), else 401; it serves only the views and its own static files, never a stored file as it is."""

from __future__ import annotations

import hmac
import importlib.util
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from orchestrator.dashboard.runs import Dashboard
from orchestrator.errors import ResultsNotFound, RunError
from orchestrator.storage.base import StoreError

STATIC = Path(__file__).parent / "static"
COOKIE = "hpo_dashboard_token"
# a run's views by their path (api/run/NAME/RUN_ID/VIEW), each built once per version of the run (Dashboard.view)
VIEWS = {
    "summary": "summary",
    "trials": "trial_table",
    "parameters": "parameters",
    "importance": "importance",
    "pareto": "pareto",
    "lineage": "lineage",
    "ledger": "ledger",
}
_STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}


def plotly_js() -> Path:
    """plotly.min.js as the plotly package ships it (found without importing plotly)."""
    found = importlib.util.find_spec("plotly")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed (pip install plotly)")
    return Path(list(found.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"


def _json(value, status: int = 200) -> Response:
    body = json.dumps(value, allow_nan=False, default=str, separators=(",", ":"))
    return Response(body, status, media_type="application/json", headers={"Cache-Control": "no-store"})


class _Guard:
    """ASGI middleware: read-only methods, the token when there is one, and headers that keep the page in its
    own origin."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await Response("read-only\n", 405, headers={"Allow": "GET, HEAD"})(scope, receive, send)
        if self.token is not None:
            request = Request(scope)
            given = request.query_params.get("token")
            if given is not None and self._valid(given):
                # a link with ?token=: keep it in a cookie and drop it from the address bar
                query = urlencode(
                    [(k, v) for k, v in parse_qsl(scope["query_string"].decode()) if k != "token"]
                )
                response = RedirectResponse(scope["path"] + (f"?{query}" if query else ""), 303)
                response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
                return await response(scope, receive, send)
            bearer = request.headers.get("authorization", "")
            carried = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
            carried = carried if carried is not None else request.cookies.get(COOKIE)
            if carried is None or not self._valid(carried):
                return await Response(
                    "401: this dashboard needs its token (a ?token= link, or Authorization: Bearer)\n",
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    def _valid(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token)


def create_app(dashboard: Dashboard, *, token: str | None = None, first: str | None = None):
    """The ASGI app over `dashboard`; `first` ("name/run_id") is the run the page opens on (else the newest)."""

    def page(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def static(request: Request):
        name = request.path_params["file"]
        if name == "plotly.min.js":  # 4.8 MB that changes only with the package: the browser keeps it
            return FileResponse(
                plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
            )
        if name not in _STATIC_FILES:
            return Response("not found\n", 404)
        return FileResponse(
            STATIC / name, media_type=_STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
        )

    def opening(request: Request):  # the run the page opens on: the one named, else the newest
        newest = dashboard.newest()
        return _json({"first": first or (newest.key if newest else None)})

    def runs(request: Request):
        return _json({"root": dashboard.root.uri, "runs": dashboard.runs()})

    def view(request: Request):
        name, run_id, what = (request.path_params[k] for k in ("name", "run_id", "view"))
        query = request.query_params
        try:
            if what in VIEWS:
                return _json(dashboard.view(VIEWS[what], name, run_id))
            if what == "curves":
                trials = [t for t in query.get("trials", "").split(",") if t]
                return _json(dashboard.curves(name, run_id, query.get("metric"), trials or None))
        except KeyError:
            return _json({"error": f"no run {name}/{run_id} under {dashboard.root.uri}"}, 404)
        except (
            RunError,
            ResultsNotFound,
            StoreError,
        ) as exc:  # a damaged table, a store that does not answer: one line
            return _json({"error": str(exc).splitlines()[0]}, 503)
        return _json({"error": f"no view {what!r}"}, 404)

    def overlay(request: Request):
        keys = [k for k in request.query_params.get("runs", "").split(",") if k]
        return _json(dashboard.overlay(keys))

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/static/{file}", static),
            Route("/api/first", opening),
            Route("/api/runs", runs),
            Route("/api/overlay", overlay),
            Route("/api/run/{name}/{run_id}/{view}", view),
        ]
    )
    return _Guard(app, token)
