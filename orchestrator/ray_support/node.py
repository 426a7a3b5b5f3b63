"""`hpo node ARGS`: this machine's node of a Ray cluster, started exactly as `ray start ARGS` starts it (the same
options, processes and exit codes: Ray's own `ray start` runs in this process), with two changes an HPO
cluster wants:

- Its Python workers are forked from a fork server (forkserver.py) that has torch and the trial side imported:
  a trial process on the node starts without paying torch's imports (~3-5 CPU-s each, measured on this
  project's 2-core machine). Workers whose runtime_env only sets variables and a working directory (what
  `hpo submit` gives a job) are forked too; any other runtime_env, or a job whose working directory holds
  its own copy of a library the server imported (hpo's own repository, say), starts as Ray starts it.
  HPO_FORKSERVER=0 turns it off.
- The raylet may take 90 s to register with the GCS, not Ray's fixed 30 s, after which `ray start` gives up
  on a loaded machine ("The current node timed out during startup").

The server outlives this command, which ends once the node runs (unless --block), and ends with the node's
raylet (`ray stop`, a killed raylet); its forked workers end with the raylet as Ray's own do.
"""

from __future__ import annotations

import os

from orchestrator.ray_support import forkserver, ray_compat
from orchestrator.ray_support.processes import process_alive


def start_node(ray_start_args: list[str]) -> int:
    """Run `ray start RAY_START_ARGS` here as described above; its exit code."""
    from ray.scripts.scripts import cli, start  # Ray's own command line (`ray`) and its `start`

    server = forkserver.start(for_node=True)
    raylets: list[int] = []

    def on_raylet(pid: int) -> None:
        raylets.append(pid)
        if server is not None:
            server.watch(pid)

    if server is not None:
        os.environ.update(server.environment)  # the raylet's, and so its launchers'
    code = 1
    try:
        with ray_compat.forked_node_start(
            worker_launcher=server.launcher_command() if server else None, on_raylet=on_raylet
        ):
            cli.callback(
                **{o.name: o.default for o in cli.params if o.expose_value}
            )  # `ray`'s, as `ray start` has
            start.main(args=ray_start_args, prog_name="hpo node")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        # a node that runs keeps its server (it ends with the raylet); one that did not start, or a --block
        # node that has stopped, leaves nothing
        if server is not None and not any(process_alive(pid) for pid in raylets):
            server.stop()
    return code
