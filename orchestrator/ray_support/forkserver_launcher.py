"""What the raylet starts for a Python worker when a fork server serves its node (forkserver.py): a few
milliseconds of standard library (`python -I -S`), no import of Ray or torch. It hands the worker's command
line, environment, working directory and standard streams to the fork server over its Unix socket, and then
lives as long as the worker the server forked for it, so that the raylet's view of the process it started
stays true: the worker ends when this process is killed (it watches the socket), and this process ends when
the worker does. Without a server to talk to, it becomes the worker Ray would have started (exec).

Run as: python -I -S forkserver_launcher.py RAY_WORKER_PY ARGS...  (HPO_FORKSERVER_SOCKET names the
socket, HPO_FORKSERVER_PID the server; while the server still imports, this waits for its socket.)
"""

import json
import os
import re
import shlex
import socket
import sys
import time

WAIT_FOR_SERVER_S = 60.0  # its imports, on a saturated machine; the worker would pay them itself otherwise


def _server_alive(pid: int) -> bool:
    """processes.process_alive's test, written again on purpose: this file runs isolated and without
    site-packages (`-I -S`), so it imports nothing of hpo's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _connect(path: str, pid: int):
    deadline = time.monotonic() + WAIT_FOR_SERVER_S
    while time.monotonic() < deadline and _server_alive(pid):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            return conn
        except OSError:
            conn.close()
            time.sleep(0.02)
    return None


CONTEXT_FLAG = "--serialized-runtime-env-context="
EXEC_REPLY = b"exec\n"  # the server's (forkserver_zygote.py) when the worker must not be forked from it


def _only_variables_and_directory(args: list[str]) -> bool:
    """Whether the worker's runtime_env, if it has one, only sets variables and a working directory (a job's
    `working_dir`: Ray's command prefix `cd DIR &&`); if so, they are set here."""
    context = next((json.loads(a[len(CONTEXT_FLAG) :]) for a in args if a.startswith(CONTEXT_FLAG)), {})
    if context.get("override_worker_entrypoint") or context.get("java_jars"):
        return False
    if context.get("py_executable") not in (None, sys.executable):
        return False
    prefix, directory = context.get("command_prefix") or [], None
    if prefix:
        if not (len(prefix) == 3 and prefix[0] == "cd" and prefix[2] == "&&"):
            return False
        directory = shlex.split(prefix[1])  # quoted by Ray (working_dir.py: shlex.quote)
        if len(directory) != 1 or not os.path.isdir(directory[0]):
            return False
    for key, value in (context.get("env_vars") or {}).items():  # as ray._private.utils.update_envs sets them
        os.environ[key] = re.sub(r"\$\{[A-Z0-9_]+\}", "", os.path.expandvars(value))
    if directory:
        os.chdir(directory[0])
    return True


def main() -> None:
    path, pid = os.environ.get("HPO_FORKSERVER_SOCKET", ""), os.environ.get("HPO_FORKSERVER_PID", "")
    args = sys.argv[1:]
    # The raylet's command is `python setup_worker.py default_worker.py ARGS --language=PYTHON [--serialized-
    # runtime-env-context=...]`. For a worker without a runtime_env Ray drops the setup step (it knows it by the
    # command's second word, which here is this file's flag), so this does; for one whose runtime_env sets only
    # environment variables and a working directory, this does what setup_worker.py would
    # (RuntimeEnvContext.exec_worker: the variables, then `cd DIR && exec python ...`), and then the same. Any
    # other runtime_env (another command prefix or interpreter, a container) runs as Ray runs it.
    plain = os.path.basename(args[0]) == "setup_worker.py" and _only_variables_and_directory(args)
    if plain:
        args = [a for a in args[1:] if a != "--language=PYTHON" and not a.startswith(CONTEXT_FLAG)]
    conn = _connect(path, int(pid)) if plain and path and pid.isdigit() else None
    if conn is not None:
        request = {"argv": args, "env": dict(os.environ), "cwd": os.getcwd(), "launcher": os.getpid()}
        try:
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
            reply = conn.makefile("rb").readline()  # the worker's pid, once forked, or EXEC_REPLY
        except OSError:
            reply = b""
        if reply and reply != EXEC_REPLY:
            try:
                while conn.recv(4096):  # until the worker ends (its end of the socket closes)
                    pass
            except OSError:
                pass
            return
    # no server (it ended, or never started), a worker with another runtime_env, or one whose own PYTHONPATH holds
    # another copy of a library the server imported: the process Ray would have started
    os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
    main()
