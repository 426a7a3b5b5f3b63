"""A command handed to `hpo up`'s daemon (ray_support/handoff.py), without Ray: the daemon's side in this test's
main thread, as in the daemon, the command's side in a thread. What the run writes, its exit code and the
command's environment reach the right side; the command's signals reach the run; a command that goes away stops
it; the daemon refuses what it cannot drive as the command would have. The real daemon: test_warm_session.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading

import pytest

from orchestrator.ray_support import handoff

SETTINGS = {"RAY_DEDUP_LOGS": "0", "PATH": "/usr/bin"}


@pytest.fixture
def server(tmp_path):
    # AF_UNIX paths are short (108 bytes): pytest's tmp_path can exceed it
    path = f"/tmp/hpo-handoff-{os.getpid()}-{threading.get_ident()}.sock"
    server = handoff.Server(path, env=SETTINGS)
    yield server
    server.close()


def _request(**changes) -> dict:
    env = {**SETTINGS, "HPO_STOP_GRACE_S": "3", "AWS_SECRET_ACCESS_KEY": "not-logged"}
    return {
        "argv": ["run", "job.yaml"],
        "env": env,
        "cwd": os.getcwd(),
        "executable": sys.executable,
        **changes,
    }


class Command(threading.Thread):
    """The command's side over a raw socket: sends `request`, collects every message; `then(message, send)` may
    answer each (a signal), or end the connection (returns False)."""

    def __init__(self, path: str, request: dict, then=None):
        super().__init__(daemon=True)
        self.path, self.request, self.then = path, request, then
        self.messages: list[dict] = []

    def run(self):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        conn.sendall((json.dumps(self.request) + "\n").encode())

        def send(message):
            conn.sendall((json.dumps(message) + "\n").encode())

        with conn, conn.makefile("r") as reader:
            for line in reader:
                message = json.loads(line)
                self.messages.append(message)
                if self.then and self.then(message, send) is False:
                    return

    def text(self, key: str) -> str:
        return "".join(m[key] for m in self.messages if key in m)

    def exit(self):
        return next((m["exit"] for m in self.messages if "exit" in m), None)


def test_a_handed_off_run_writes_to_the_command_with_its_environment_and_the_daemon_is_put_back(server):
    """What the run prints reaches the command as it was written; the command's environment is the run's (a
    command started by a process that imported Ray carries Ray's RAY_CLIENT_MODE=0: the same settings)."""
    seen = {}

    def run_job(argv):
        seen["argv"] = argv
        seen["grace"] = os.environ.get("HPO_STOP_GRACE_S")
        print("results_uri: /tmp/somewhere")
        print("[00:00] trial_0000 started", file=sys.stderr)
        return 3

    before = dict(os.environ)
    streams = sys.stdout, sys.stderr
    handlers = [signal.getsignal(s) for s in handoff.RELAYED]
    command = Command(server.path, _request(env={**_request()["env"], "RAY_CLIENT_MODE": "0"}))
    command.start()
    job = server.next_job(timeout=30)
    assert job is not None
    server.drive(job, run_job)
    command.join(30)
    assert command.messages[0]["accepted"] and command.messages[0]["pid"] == os.getpid()
    assert command.text("o") == "results_uri: /tmp/somewhere\n"
    assert command.text("e") == "[00:00] trial_0000 started\n"
    assert command.exit() == 3
    assert seen == {"argv": ["run", "job.yaml"], "grace": "3"}
    # the daemon's process as it was: environment, streams, handlers; and free for the next command
    assert dict(os.environ) == before and (sys.stdout, sys.stderr) == streams
    assert [signal.getsignal(s) for s in handoff.RELAYED] == handlers
    assert server.busy.acquire(blocking=False)
    server.busy.release()


def test_the_commands_signal_reaches_the_run_and_a_command_that_goes_away_stops_it(server):
    """Ctrl-C at the command: raised in the daemon's main thread, where the run's own handlers (or, before its
    search, Python's) take it. A command that closes its connection mid-run is a SIGTERM."""

    def waits_for_a_signal(argv):
        print("ready")
        forever = threading.Event()
        while not forever.wait(0.01):  # woken by the signal's KeyboardInterrupt
            pass

    def on_ready_interrupt(message, send):
        if message.get("o") == "ready\n":
            send({"signal": int(signal.SIGINT)})

    command = Command(server.path, _request(), then=on_ready_interrupt)
    command.start()
    server.drive(server.next_job(timeout=30), waits_for_a_signal)
    command.join(30)
    assert command.exit() == 130 and "hpo: interrupted" in command.text("e")

    caught = []

    def notes_the_stop(argv):
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
        try:
            print("ready")
            stopped = threading.Event()
            while not caught and not stopped.wait(0.01):
                pass
            print("still writing to a command that is gone")  # never raises
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)

    gone = Command(server.path, _request(), then=lambda message, send: message.get("o") != "ready\n")
    gone.start()
    server.drive(server.next_job(timeout=30), notes_the_stop)
    gone.join(30)
    assert caught == [signal.SIGTERM]


@pytest.mark.parametrize(
    "change, why",
    [
        ({"env": {**SETTINGS, "RAY_DEDUP_LOGS": "1"}}, "other Ray settings (RAY_DEDUP_LOGS)"),
        ({"env": {"PATH": "/usr/bin"}}, "other Ray settings (RAY_DEDUP_LOGS)"),
        ({"env": {**SETTINGS, "RAY_CLIENT_MODE": "1"}}, "other Ray settings (RAY_CLIENT_MODE)"),
        ({"env": {**SETTINGS, "PYTHONPATH": "/elsewhere"}}, "other Ray settings (PYTHONPATH)"),
        ({"executable": "/usr/bin/true"}, "this command /usr/bin/true"),
        ({"cwd": "/"}, f"it serves {os.getcwd()}"),
        ({"argv": None, "env": None}, "not understood"),
        ("busy", "it is driving another run"),
    ],
)
def test_the_daemon_refuses_a_run_it_cannot_drive_as_the_command_would_have(server, change, why):
    """Refused in one line; the command then drives its run itself (hpo run's fallback, tested with the real
    daemon in test_warm_session.py)."""
    if change == "busy":
        server.busy.acquire()
        request = _request()
    else:
        request = {k: v for k, v in {**_request(), **change}.items() if v is not None}
    command = Command(server.path, request)
    command.start()
    command.join(30)
    assert command.messages == [{"refused": command.messages[0]["refused"]}]
    assert why in command.messages[0]["refused"]
    assert "not-logged" not in command.messages[0]["refused"]
    assert server.next_job(timeout=0) is None


def test_hand_off_returns_none_when_no_daemon_answers_or_it_refuses(server, monkeypatch):
    said = []
    assert handoff.hand_off("/tmp/no-such-hpo.sock", ["run", "x.yaml"], said.append) is None and not said
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")
    result = []
    asking = threading.Thread(
        target=lambda: result.append(handoff.hand_off(server.path, ["run", "x"], said.append))
    )
    asking.start()
    asking.join(30)
    assert result == [None]
    assert said and said[0].startswith("the warm session of `hpo up` does not drive this run: its processes")
    assert said[0].endswith("; it drives itself")


def test_the_daemon_forgets_the_users_modules_after_a_run_but_not_what_is_installed(tmp_path, monkeypatch):
    (tmp_path / "my_workload_v.py").write_text("VERSION = 1\n")
    site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "installed_lib_v.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(tmp_path))
    import installed_lib_v
    import my_workload_v

    assert my_workload_v.VERSION == 1 and installed_lib_v.X == 1
    handoff.forget_modules_under(os.path.realpath(tmp_path))
    assert "my_workload_v" not in sys.modules and "installed_lib_v" in sys.modules
    sys.modules.pop("installed_lib_v")
