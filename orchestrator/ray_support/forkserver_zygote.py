"""The fork server's process (forkserver.py): torch, torch's compiler stack and the trial side's other
libraries imported once, then a Ray worker forked from it for each request of forkserver_launcher.py.

It must not import Ray: Ray's C++ settings (`RayConfig`, the job id and auth mode among them) are read from the
environment once per process, when `ray` is imported, and a forked worker has to read those the raylet gave
it. So each worker imports Ray itself (~1 CPU-s, the libraries under it already here) and skips torch's
(~2-3 CPU-s) and torch._dynamo's (~1-2 CPU-s, imported at a trial's first optimizer step).

Run as: python forkserver_zygote.py SOCKET  (the server ends when the process that started it does)
"""

import ctypes
import importlib
import json
import os
import runpy
import signal
import socket
import sys
import threading

# Imported here so that no worker imports them again; each is optional (a slim install lacks some).
PRELOAD = (
    "numpy",
    "torch",
    "torch._dynamo",
    "torch.optim",
    "torch.nn",
    "pandas",
    "pyarrow",
    "pyarrow.parquet",
    "google.protobuf",
    "grpc",
    "msgpack",
    "jsonschema",
    "pydantic",
    "requests",
    "yaml",
    "cloudpickle",
    "psutil",
    "colorama",
    "filelock",
    "packaging",
    "fsspec",
    "aiohttp",
    "orchestrator.train",
    "orchestrator.workloads",
    "orchestrator.results",
    "orchestrator.storage",
)


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # (a library that cannot import here is imported by a worker, or not at all)
            pass
    import torch

    # torch imports its compiler stack at the first use_deterministic_algorithms call (every trial makes it)
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True)
        torch.use_deterministic_algorithms(False)
    # A library above that imported Ray would give every worker this process's Ray settings: serve none (each
    # launcher then starts its worker as Ray does).
    if "ray" in sys.modules:
        raise SystemExit("forkserver: Ray was imported while preloading; not serving")


def _end_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_worker(conn: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: the launcher's streams, environment, directory and command line, then Ray's
    default_worker.py as the raylet's `python default_worker.py ARGS` would run it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    try:  # the launcher's process group, where the raylet started it (Ray's own workers live there)
        os.setpgid(0, os.getpgid(request["launcher"]))
    except OSError:
        pass
    import random

    random.seed()  # as a fresh process would be (Python reseeds its own at fork; numpy's is seeded at import)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()

    def watch_launcher() -> None:  # the raylet killed what it started (a start that took too long): end too
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch_launcher, name="forkserver-launcher", daemon=True).start()
    worker = request["argv"][0]
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:] = [os.path.dirname(worker), *extra, *sys.path]  # as `python default_worker.py` has it
    sys.argv = list(request["argv"])
    code = 0
    try:
        runpy.run_path(worker, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code)


def serve(path: str) -> None:
    _end_with_parent()
    _preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".new")
    os.rename(path + ".new", path)  # launchers connect only once every import is done
    server.listen(128)
    server.settimeout(0.5)
    while True:
        _reap()
        try:
            conn, _ = server.accept()
        except (TimeoutError, InterruptedError):
            continue
        try:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            while message and not message.endswith(b"\n"):  # the rest of a long environment
                more = conn.recv(1 << 20)
                if not more:
                    break
                message += more
            request = json.loads(message)
        except (OSError, ValueError):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            server.close()
            _become_worker(conn, fds, request)
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(f"{pid}\n".encode())
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    sys.path.pop(0)  # this file's directory (orchestrator/ray_support) is no package root
    serve(sys.argv[1])
