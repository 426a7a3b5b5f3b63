"""`hpo run` and `hpo resume` handed to the warm session of `hpo up`: the daemon drives the run, the command only
relays.

Why: joining `hpo up`'s Ray still cost a command ~2 s of its own (importing Ray, Tune, pyarrow; connecting a
driver to the GCS) before the first trial. The daemon has all of that done already, so the command sends it what
it was asked (its arguments, environment and directory) over a Unix socket and relays the run's stdout and
stderr, its signals and its exit code: the same lines, the same files, the same codes as a run driven here.

The wire: one JSON object per line. The command sends its request; the daemon answers `{"accepted": true}` or
`{"refused": why}` (the command then drives the run itself, joining the session's Ray as before), then
`{"o": text}` / `{"e": text}` for what the run writes to stdout / stderr, and `{"exit": code}` last. Meanwhile
the command sends `{"signal": n}` for each SIGINT or SIGTERM it gets (a SIGHUP as SIGTERM); the daemon raises it in the
thread that drives the run, which winds the run down as in a command of its own (stopping.py). A command that
goes away (its terminal closed, a SIGKILL) is a SIGTERM: the run winds down, resumable.

Safe as `hpo up` is: the socket is its owner's only (mode 0600, and the daemon checks the peer's uid), since the
request carries the command's environment (a store's credentials). One run at a time: while one runs, the next
command is refused and drives itself on the session's Ray. The daemon takes a run only where the command's
Ray settings (its RAY_* variables, PYTHONPATH, its Python) are the session's, so that the run sees what it would
have seen driving itself.

Light on the command's side (socket, json, signal): the command imports nothing of Ray's before it knows.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable

SOCKET_FILE = "up.sock"
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What must be the same in the command and the daemon for the daemon to drive the run as the command would have:
# Ray's and Tune's settings (Tune copies RAY_* into trial actors; Ray reads them), where Python imports from.
MUST_MATCH = ("PYTHONPATH", "VIRTUAL_ENV")
MUST_MATCH_PREFIXES = ("RAY_",)
# Set in the daemon by its own session (token auth): not the command's to give
DAEMON_OWN = ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
ACCEPT_WAIT_S = 5.0  # the command waits this long for the daemon's answer, then drives the run itself


# What importing Ray sets in any process's environment, to its default (ray/_private/client_mode_hook.py): a
# command started by a process that imported Ray has it, one started from a shell has not; the same settings
RAY_IMPORT_SETS = {"RAY_CLIENT_MODE": "0"}


def ray_settings(env: dict) -> dict:
    return {
        k: v
        for k, v in env.items()
        if (k in MUST_MATCH or k.startswith(MUST_MATCH_PREFIXES))
        and k not in DAEMON_OWN
        and RAY_IMPORT_SETS.get(k) != v
    }


def launch_environment() -> dict:
    """The environment this process was started with (Linux: /proc/self/environ), before importing Ray, which
    sets variables of its own (RAY_CLIENT_MODE); elsewhere, the environment now."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return dict(os.environ)
    pairs = (item.decode(errors="surrogateescape").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def _send(conn: socket.socket, lock: threading.Lock, message: dict) -> bool:
    data = (json.dumps(message) + "\n").encode()
    with lock:
        try:
            conn.sendall(data)
            return True
        except OSError:  # the command is gone: what it would have seen is in the run's files
            return False


def _lines(conn: socket.socket):
    """The JSON objects `conn` sends, until it closes."""
    with conn.makefile("r", encoding="utf-8", newline="\n") as reader:
        for line in reader:
            with contextlib.suppress(ValueError):
                yield json.loads(line)


# --- the daemon's side ---------------------------------------------------------------------------------------


class _Relay(io.TextIOBase):
    """sys.stdout or sys.stderr while the daemon drives a run: each line goes to the command as `{key: text}`
    (what is left without a newline, at a flush). Never raises: a command that went away leaves the run to finish
    on its own."""

    def __init__(self, conn: socket.socket, lock: threading.Lock, key: str):
        self._conn, self._lock, self._key = conn, lock, key
        self._held = ""
        self._holding = threading.Lock()  # the run's main thread and Ray's log thread both write

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._holding:
            held = self._held + text
            cut = held.rfind("\n") + 1
            self._held = held[cut:]
            if cut:
                _send(self._conn, self._lock, {self._key: held[:cut]})
        return len(text)

    def flush(self) -> None:
        with self._holding:
            held, self._held = self._held, ""
            if held:
                _send(self._conn, self._lock, {self._key: held})


class Job:
    """One command's run, from its request to its exit code."""

    def __init__(self, conn: socket.socket, lock: threading.Lock, request: dict, lines):
        self.conn, self.lock, self.request, self._lines = conn, lock, request, lines
        self.running = False
        self.pending: int | None = None  # a signal that came before the run started: raised when it does
        self.done = threading.Event()
        self._main = threading.main_thread().ident

    def relay_signals(self) -> None:
        """The command's signals, raised in the main thread while the run is driven; its end, a SIGTERM."""
        ended_by_command = True
        for message in self._lines:
            if "signal" in message and int(message["signal"]) in RELAYED:
                self._raise(int(message["signal"]))
            elif message.get("bye"):
                ended_by_command = False
                break
        if ended_by_command and not self.done.is_set():
            self._raise(signal.SIGTERM)

    def _raise(self, signum: int) -> None:
        with self.lock:
            if self.running:
                signal.pthread_kill(self._main, signum)
            elif not self.done.is_set() and self.pending is None:
                self.pending = signum

    def drive(self, run_job: Callable[[list[str]], int]) -> None:
        """In the main thread (signal handlers run only there): run the command's arguments with its environment,
        its output relayed; then the daemon's process as it was."""
        request = self.request
        saved_env = dict(os.environ)
        streams = sys.stdout, sys.stderr
        handlers = {signum: signal.getsignal(signum) for signum in RELAYED}
        code = 1
        try:
            # the command's environment (a store's credentials, HPO_* settings); Ray's settings are the daemon's,
            # which are the command's (checked when the request came), plus the session's own
            env = dict(request["env"])
            env.update(
                {
                    k: v
                    for k, v in saved_env.items()
                    if k in DAEMON_OWN or (k not in env and k.startswith("RAY_"))
                }
            )
            os.environ.clear()
            os.environ.update(env)
            sys.stdout = _Relay(self.conn, self.lock, "o")
            sys.stderr = _Relay(self.conn, self.lock, "e")
            for signum in RELAYED:  # until the search catches them: as in a command's own process
                signal.signal(signum, signal.default_int_handler)
            code = self._run(run_job)
        finally:
            with self.lock:
                self.running = False
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)
            for relay in (sys.stdout, sys.stderr):
                if isinstance(relay, _Relay):
                    relay.flush()
            sys.stdout, sys.stderr = streams
            os.environ.clear()
            os.environ.update(saved_env)
            self.done.set()
            _send(self.conn, self.lock, {"exit": code})
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_WR)

    def _run(self, run_job: Callable[[list[str]], int]) -> int:
        try:
            with self.lock:
                self.running = True
                pending = self.pending
            if pending is not None:
                raise KeyboardInterrupt
            return run_job(list(self.request["argv"]))
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:
            print("hpo: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # the daemon stays up for the next command; this one learns why
            print(
                f"hpo: the warm session could not drive the run: {type(exc).__name__}: {exc}", file=sys.stderr
            )
            return 1


class Server:
    """The daemon's socket: a thread accepts commands; the main thread drives their runs one at a time
    (`next_job`)."""

    def __init__(self, path: str, executable: str = sys.executable, env: dict | None = None):
        self.path = path
        self.executable = os.path.realpath(executable)
        self.cwd = os.getcwd()  # what it serves (while it drives a run, the run's private folder is current)
        self.settings = ray_settings(dict(os.environ if env is None else env))
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.busy = threading.Lock()  # held from a request's acceptance to its run's end
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window in which another user could connect
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        threading.Thread(target=self._accept, name="hpo-up-accept", daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the daemon is going down
                return
            threading.Thread(target=self._take, args=(conn,), name="hpo-up-request", daemon=True).start()

    def _take(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            conn.settimeout(ACCEPT_WAIT_S)
            lines = _lines(conn)
            request = next(lines, None)
            conn.settimeout(None)
        except OSError:
            conn.close()
            return
        why = self._refusal(uid, request)
        if why is None and not self.busy.acquire(blocking=False):
            why = "it is driving another run"
        if why is not None:
            _send(conn, lock, {"refused": why})
            conn.close()
            return
        job = Job(conn, lock, request, lines)
        _send(conn, lock, {"accepted": True, "pid": os.getpid()})
        self.jobs.put(job)
        job.relay_signals()

    def _refusal(self, uid: int, request: dict | None) -> str | None:
        if uid != os.getuid():
            return "it serves its own user only"
        if not isinstance(request, dict) or not {"argv", "env", "cwd", "executable"} <= request.keys():
            return "the request was not understood"
        if os.path.realpath(request["executable"]) != self.executable:
            return f"it runs {self.executable}, this command {request['executable']}"
        theirs = ray_settings(request["env"])
        if theirs != self.settings:
            names = sorted(
                k for k in theirs.keys() | self.settings.keys() if theirs.get(k) != self.settings.get(k)
            )
            return f"its processes were started with other Ray settings ({', '.join(names)})"
        if os.path.realpath(request["cwd"]) != os.path.realpath(self.cwd):
            return f"it serves {self.cwd}"
        return None

    def next_job(self, timeout: float) -> Job | None:
        try:
            return self.jobs.get(timeout=timeout)
        except queue.Empty:
            return None

    def drive(self, job: Job, run_job: Callable[[list[str]], int]) -> None:
        try:
            job.drive(run_job)
        except KeyboardInterrupt:  # a relayed signal that came as the run ended: the run has its answer
            pass
        finally:
            self.busy.release()


def forget_modules_under(project: str) -> None:
    """Forget (drop from sys.modules) the modules whose files lie in `project`, except ours and whatever is
    installed (a project's .venv lies inside it): the daemon's next run imports the user's code as it is then."""
    keep = tuple(
        os.path.realpath(p) + os.sep
        for p in {os.path.dirname(os.path.dirname(__file__)), sys.prefix, sys.base_prefix, sys.exec_prefix}
    )
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = os.path.realpath(path)
        if path.startswith(project + os.sep) and not path.startswith(keep) and "site-packages" not in path:
            del sys.modules[name]


# --- the command's side --------------------------------------------------------------------------------------


def hand_off(path: str, argv: list[str], progress: Callable[[str], None]) -> int | None:
    """Ask the daemon at `path` to drive `hpo ARGV`; relay its output, signals and exit code. Returns the run's
    exit code, or None when the daemon did not take it (not there, busy, other settings): the command then
    drives the run itself."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(ACCEPT_WAIT_S)
        conn.connect(path)
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "executable": sys.executable}
        conn.sendall((json.dumps(request) + "\n").encode())
        reader = conn.makefile("r", encoding="utf-8", newline="\n")
        answer = json.loads(reader.readline() or "{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if not answer.get("accepted"):
        if answer.get("refused"):
            progress(
                f"the warm session of `hpo up` does not drive this run: {answer['refused']}; it drives itself"
            )
        conn.close()
        return None
    conn.settimeout(None)
    progress(
        f"joining the warm session of `hpo up`: its process (pid {answer.get('pid')}) drives the run; "
        "`hpo down` stops it"
    )
    return _relay(conn, reader)


def _relay(conn: socket.socket, reader) -> int:
    lock = threading.Lock()
    signals = []

    def on_signal(signum, frame):
        signals.append(signum)
        if len(signals) > 2:  # a third: the command goes now; the daemon's run winds down without it
            os._exit(128 + signum)
        # a closed terminal's SIGHUP would end a command that drives its own run: here the run winds down
        _send(conn, lock, {"signal": int(signal.SIGTERM if signum == signal.SIGHUP else signum)})

    before = {signum: signal.signal(signum, on_signal) for signum in RELAYED}
    uri = None
    try:
        for line in reader:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "o" in message:
                sys.stdout.write(message["o"])
                sys.stdout.flush()
                if message["o"].startswith("results_uri: "):
                    uri = message["o"].split(None, 1)[1].strip()
            elif "e" in message:
                sys.stderr.write(message["e"])
                sys.stderr.flush()
            elif "exit" in message:
                _send(conn, lock, {"bye": True})
                return int(message["exit"])
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        conn.close()
    then = f"; `hpo resume {uri}` continues the run" if uri else ""
    print(f"hpo: the warm session of `hpo up` ended before the run did{then}", file=sys.stderr)
    return 1
