"""The fork server's process (forkserver.py): torch, torch's compiler stack and the trial side's other
libraries imported once, then a Ray worker forked from it for each request of forkserver_launcher.py.

It must not import Ray: Ray's C++ settings (`RayConfig`, the job id and auth mode among them) are read from the
environment once per process, when `ray` is imported, and a forked worker has to read those the raylet gave
it. So each worker imports Ray itself (~1 CPU-s, the libraries under it already here) and skips torch's
(~2-3 CPU-s) and torch._dynamo's (~1-2 CPU-s, imported at a trial's first optimizer step).

Run as: python forkserver_zygote.py SOCKET [--until-raylet-in FILE]  (the server ends when the process that
started it does; with the flag, when the raylet whose pid FILE will hold does, and until FILE is written, when
the process that started it does)
"""

import ctypes
import importlib
import json
import os
import runpy
import shutil
import signal
import socket
import sys
import threading

from orchestrator.ray_support.processes import process_alive  # (the standard library only: no Ray)

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


RAYLET_FLAG = "--until-raylet-in"
# to a launcher: start the worker yourself, as Ray would (forkserver_launcher.py says it too)
EXEC_REPLY = b"exec\n"


def _served_gone(raylet_file: str, starter: int) -> bool:
    """A node's server: whether the raylet it serves has ended (or, before its pid is known, the starter)."""
    try:
        with open(raylet_file) as fh:
            pid = int(fh.read())
    except (OSError, ValueError):
        pid = starter
    return not process_alive(pid)


def _shadowed(paths: list[str]) -> str | None:
    """A library imported here that a worker's own PYTHONPATH entries (a job's working_dir among them) hold
    another copy of: that worker must import it from there, as Ray's would, so it is not forked."""
    mine = {name.split(".")[0] for name in PRELOAD}
    for entry in paths:
        for name in mine:
            if os.path.exists(os.path.join(entry, name)) or os.path.exists(os.path.join(entry, name + ".py")):
                return os.path.join(entry, name)
    return None


def _own_paths(request: dict) -> list[str]:
    return [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]


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
    # as `python default_worker.py` has it
    sys.path[:] = [os.path.dirname(worker), *_own_paths(request), *sys.path]
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


def serve(path: str, raylet_file: str | None = None) -> None:
    starter = os.getppid()
    if raylet_file is None:
        _end_with_parent()
    _preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".new")
    os.rename(path + ".new", path)  # launchers connect only once every import is done
    server.listen(128)
    server.settimeout(0.5)
    while True:
        _reap()
        if raylet_file is not None and _served_gone(raylet_file, starter):
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            return
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
        if _shadowed(_own_paths(request)):  # the launcher becomes the process Ray would have started
            for fd in fds:
                os.close(fd)
            try:
                conn.sendall(EXEC_REPLY)
            except OSError:
                pass
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
    serve(sys.argv[1], sys.argv[3] if sys.argv[2:3] == [RAYLET_FLAG] else None)
