"""The studio's protocol and access rules without a session: every hostile or malformed
message is refused with one line before the worker sees it, a server on a non-local address
needs its token on every request and socket, the local one refuses other Hosts and other
sites' sockets; and `clipclop studio` end to end (a subprocess on 0.0.0.0 with the demo CLIP)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import httpx
import pytest

with warnings.catch_warnings():
    # This starlette asks for httpx2 over httpx; the test client works with either.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

from clipclop_jax.cli.main import main
from clipclop_jax.studio import access, protocol
from clipclop_jax.studio.server import StudioServer, create_app

LIMITS = protocol.Limits(population=2, num_patches=4, library_size=10)


class FakeWorker:
    """The server's view of a worker: limits, subscribe, submit (it records commands)."""

    limits = LIMITS

    def __init__(self):
        self.commands = []

    def subscribe(self, deliver):
        deliver(json.dumps({"type": "state", "version": 1}))
        return 1

    def unsubscribe(self, key):
        pass

    def submit(self, command, reply):
        self.commands.append(command)
        reply(protocol.ok(command.id))

    def stop(self, timeout=None):
        pass


@pytest.mark.parametrize(
    "text, message",
    [
        ("{oops", "not a JSON message"),
        ('{"type": "step", "steps": NaN}', "not a JSON message"),
        ('{"type": "step", "steps": Infinity}', "not a JSON message"),
        ("[" * 100_000, "over 65536 bytes"),
        ("[" * 30_000 + "]" * 30_000, "not a JSON message"),
        ("[1]", "JSON object"),
        ('"play"', "JSON object"),
        ('{"type": 3}', "unknown message type"),
        ('{"type": "rm -rf"}', "unknown message type"),
        ('{"type": "play", "id": [1]}', "id must be"),
        ('{"type": "play", "id": "' + "x" * 65 + '"}', "id must be"),
        ('{"type": "play", "extra": 1}', "unknown: extra"),
        ('{"type": "step"}', "missing: steps"),
        ('{"type": "step", "steps": 0}', "steps must be"),
        ('{"type": "step", "steps": 1e9}', "steps must be"),
        ('{"type": "step", "steps": true}', "steps must be"),
        ('{"type": "member", "member": 2}', "member must be"),
        ('{"type": "member", "member": -1}', "member must be"),
        ('{"type": "export", "blend": 1}', "blend must be"),
        ('{"type": "prompt", "prompt": 5}', "prompt must be"),
        ('{"type": "edit", "edit": "move"}', "JSON object"),
        ('{"type": "edit", "edit": {"op": "undo"}}', "message of its own type"),
        (
            '{"type": "edit", "edit": {"op": "move", "member": 0, "patch": 4, "dx": 1, "dy": 1}}',
            "patch must be",
        ),
        (
            '{"type": "edit", "edit": {"op": "move", "member": 0, "patch": 0, "dx": 1e6, "dy": 1}}',
            "finite number",
        ),
        (
            '{"type": "edit", "edit": {"op": "swap", "member": 0, "patch": 0, '
            '"library_patch": 10}}',
            "library_patch must be",
        ),
        (
            '{"type": "edit", "edit": {"op": "rotate", "member": 0, "patch": 0, "degrees": null}}',
            "must be a number",
        ),
    ],
)
def test_a_bad_message_is_one_line_and_reaches_nothing(text, message):
    with pytest.raises(protocol.ProtocolError, match=re.escape(message)) as error:
        protocol.parse(text, LIMITS)
    assert "\n" not in str(error.value)


def test_binary_messages_are_refused():
    with pytest.raises(protocol.ProtocolError, match="text messages"):
        protocol.parse(b'{"type": "play"}', LIMITS)


def test_good_messages_come_out_checked():
    command = protocol.parse(
        '{"type": "edit", "id": 7, "edit": {"op": "move", "member": null, "patch": 3, '
        '"dx": 2, "dy": -1.5}}',
        LIMITS,
    )
    assert command == protocol.Command(
        "edit",
        {"edit": {"op": "move", "member": None, "patch": 3, "dx": 2.0, "dy": -1.5}},
        7,
    )
    assert protocol.parse('{"type": "step", "steps": 4}', LIMITS).fields == {"steps": 4}
    assert protocol.parse('{"type": "member", "member": null}', LIMITS).fields == {"member": None}


def test_hosts_that_reach_other_machines_get_a_token():
    assert access.access_for("127.0.0.1").token is None
    assert access.access_for("::1").token is None
    assert access.access_for("localhost").token is None
    first, second = access.access_for("0.0.0.0").token, access.access_for("192.168.1.5").token
    assert first and second and first != second and len(first) >= 32
    with pytest.raises(ValueError, match="at least 16"):
        access.access_for("0.0.0.0", token="short")


def test_a_token_server_refuses_requests_and_sockets_without_it():
    worker = FakeWorker()
    rule = access.access_for("0.0.0.0")
    client = TestClient(create_app(worker, rule), base_url="http://example.org")
    assert client.get("/").status_code == 403
    assert client.get("/static/studio.js").status_code == 403
    assert client.get("/?token=wrong-token-wrong-token").status_code == 403
    page = client.get(f"/?token={rule.token}")
    assert page.status_code == 200 and "studio.js" in page.text
    # The page's own later requests carry it as the cookie it set.
    assert client.get("/static/studio.js").status_code == 200
    bearer = TestClient(create_app(worker, rule), base_url="http://example.org")
    assert bearer.get("/", headers={"Authorization": f"Bearer {rule.token}"}).status_code == 200
    with pytest.raises(WebSocketDisconnect), bearer.websocket_connect("/ws"):  # noqa: SIM117
        pass
    with bearer.websocket_connect(f"/ws?token={rule.token}") as socket:
        assert socket.receive_json()["type"] == "state"
    assert worker.commands == []


def test_the_local_server_refuses_other_hosts_and_other_sites_sockets():
    worker = FakeWorker()
    rule = access.access_for("127.0.0.1")
    local = TestClient(create_app(worker, rule), base_url="http://127.0.0.1:8765")
    assert local.get("/").status_code == 200
    # A page whose name was rebound to 127.0.0.1: its Host is its own name.
    rebound = TestClient(create_app(worker, rule), base_url="http://evil.example:8765")
    assert rebound.get("/").status_code == 403
    with (
        pytest.raises(WebSocketDisconnect),
        local.websocket_connect(
            "ws://127.0.0.1:8765/ws", headers={"Origin": "http://evil.example"}
        ),
    ):
        pass
    with local.websocket_connect(
        "ws://127.0.0.1:8765/ws", headers={"Origin": "http://127.0.0.1:8765"}
    ) as socket:
        assert socket.receive_json()["type"] == "state"


def test_hostile_socket_messages_get_errors_and_never_reach_the_worker():
    worker = FakeWorker()
    client = TestClient(create_app(worker, access.access_for("127.0.0.1")))
    with client.websocket_connect("ws://127.0.0.1/ws") as socket:
        assert socket.receive_json()["type"] == "state"
        bad = [
            "{",
            '{"type": "step", "steps": NaN, "id": 4}',
            '{"type": "edit", "id": 5, "edit": {"op": "hide", "member": 0, "patch": 99}}',
            "x" * 70_000,
        ]
        for text in bad:
            socket.send_text(text)
        socket.send_bytes(b"\x00\x01")
        replies = [socket.receive_json() for _ in range(len(bad) + 1)]
        assert [r["type"] for r in replies] == ["error"] * (len(bad) + 1)
        assert replies[2]["id"] == 5 and "patch must be" in replies[2]["message"]
        assert worker.commands == []
        # A flood: refused past the burst, and nothing beyond it was queued.
        for _ in range(400):
            socket.send_text('{"type": "pause"}')
        received = [socket.receive_json() for _ in range(400)]
        assert any("slow down" in r.get("message", "") for r in received)
        assert len(worker.commands) < 400
        assert all(c.type == "pause" for c in worker.commands)


def test_a_non_local_server_prints_its_token_and_checks_it_over_http():
    server = StudioServer(FakeWorker(), host="0.0.0.0", port=0).start()
    try:
        assert server.access.token and f"token={server.access.token}" in server.url
        base = f"http://127.0.0.1:{server.port}/"
        assert httpx.get(base).status_code == 403
        assert httpx.get(base, params={"token": server.access.token}).status_code == 200
    finally:
        server.stop()


def test_studio_from_a_run_refuses_new_settings():
    assert main(["studio", "--from", "somewhere", "--steps", "5"]) == 2
    assert main(["studio", "a cat"]) == 2  # no --out


def test_clipclop_studio_serves_a_session_and_saves_it_on_sigterm(tmp_path):
    out = tmp_path / "session"
    command = [
        sys.executable, "-m", "clipclop_jax.cli.main", "studio", "a red circle",
        "--out", str(out), "--host", "0.0.0.0", "--port", "0", "--paused",
        "--model", "demo", "--size", "32", "--num-patches", "4", "--population", "2",
        "--num-crops", "1", "--no-augment", "--steps", "8", "--chunk-steps", "2",
        "--lowres-size", "16", "--highres-size", "32", "--output-size", "32",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        url = None
        deadline = time.monotonic() + 240
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            if match := re.search(r"studio at (\S+)", line):
                url = match.group(1)
        token = re.search(r"token=([\w-]+)", url).group(1)
        port = re.search(r":(\d+)/", url).group(1)
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 403
        assert httpx.get(f"http://127.0.0.1:{port}/?token={token}").status_code == 200
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as socket:
            state = json.loads(socket.recv(timeout=60))
            assert state["type"] == "state" and state["step"] == 0 and state["width"] == 32
            socket.send(json.dumps({"type": "edit", "id": 1, "edit": {
                "op": "freeze", "member": None, "patch": 1}}))  # fmt: skip
            while (reply := json.loads(socket.recv(timeout=60)))["type"] == "state":
                pass
            assert reply == {"type": "ok", "id": 1, "result": None}
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert log == [{"op": "freeze", "member": None, "patch": 1, "step": 0}]
    assert os.listdir(out / "checkpoints")


def test_the_browser_is_found_as_on_a_users_machine(monkeypatch, tmp_path):
    from clipclop_jax.studio.browser import find_chromium

    mine = tmp_path / "my-chromium"
    mine.write_text("")
    monkeypatch.delenv("PLAYWRIGHT_CHROMIUM_EXECUTABLE", raising=False)
    monkeypatch.setenv("CLIPCLOP_CHROMIUM", str(mine))
    assert find_chromium() == str(mine)
    monkeypatch.setenv("CLIPCLOP_CHROMIUM", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="CLIPCLOP_CHROMIUM"):
        find_chromium()
    monkeypatch.delenv("CLIPCLOP_CHROMIUM")
    monkeypatch.setenv("PLAYWRIGHT_CHROMIUM_EXECUTABLE", str(mine))
    assert find_chromium() == str(mine)
    monkeypatch.delenv("PLAYWRIGHT_CHROMIUM_EXECUTABLE")
    found = find_chromium()
    assert found is None or os.path.isfile(found)  # the system's, else Playwright's own


def test_without_the_studio_extra_the_command_names_it_in_one_line(monkeypatch, capsys, tmp_path):
    # As after a plain `pip install clipclop-jax`: no starlette to import.
    for name in list(sys.modules):
        if name == "starlette" or name.startswith(("starlette.", "clipclop_jax.studio.server")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    assert main(["studio", "a red circle", "--out", str(tmp_path / "s")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "pip install 'clipclop-jax[studio]'" in error
    assert "starlette" in error
    assert not (tmp_path / "s").exists()  # refused before anything was made
