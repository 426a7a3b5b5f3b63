"""`hpo dashboard`: a web page over the runs under a storage root, live from their stored tables (runs.py reads
them incrementally; app.py serves the page, Plotly's bundled script and read-only JSON views). Reads results
and storage only: no Ray, no torch."""

from __future__ import annotations

import ipaddress
import os
import socket

from orchestrator.errors import SpecError

TOKEN_ENV = "HPO_DASHBOARD_TOKEN"


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    options=None,
    endpoint_url: str | None = None,
    say=print,
) -> None:
    """Serve the dashboard of `uri` (a storage root, or a run's results_uri) until interrupted. Off loopback a
    token is required (`token`, else HPO_DASHBOARD_TOKEN); SpecError (one line) if there is none, or the port
    is taken."""
    import uvicorn

    from orchestrator.dashboard.app import create_app
    from orchestrator.dashboard.runs import Dashboard, resolve

    token = token or os.environ.get(TOKEN_ENV) or None
    if not loopback(host) and not token:
        raise SpecError(
            f"--host {host}: off loopback the dashboard needs a token; pass --token or set {TOKEN_ENV}"
        )
    root, first = resolve(uri, options)
    dashboard = Dashboard(root, options=options, endpoint_url=endpoint_url)
    opening = first or dashboard.newest()
    if opening is not None:  # read the run the page opens on now, so that its first load does not wait for it
        dashboard.tables(opening.name, opening.run_id)
    app = create_app(dashboard, token=token, first=first.key if first else None)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SpecError(
            f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); pick another port"
        ) from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    say(f"hpo dashboard: {root} at http://{shown}:{bound}/" + (" (token required)" if token else ""))
    say("hpo dashboard: read-only; Ctrl-C stops it")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
