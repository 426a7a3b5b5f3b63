"""hpo dashboard: the runs under a storage root as a live, read-only web page (orchestrator/dashboard). Imports
neither Ray nor torch."""

from __future__ import annotations

from orchestrator.cli.common import CliError


def dashboard(args) -> int:
    from orchestrator.dashboard import serve
    from orchestrator.storage import S3Options

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: not a port; pass 0-65535 (0: any free port)")
    options = S3Options(endpoint_url=args.endpoint_url) if args.endpoint_url else None
    serve(
        args.uri,
        host=args.host,
        port=args.port,
        token=args.token,
        options=options,
        endpoint_url=args.endpoint_url,
        say=lambda line: print(line, flush=True),
    )
    return 0
