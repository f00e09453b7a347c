"""pipeline.servers.start_in_group: a port taken between its choice and the server's bind."""
import os
import socket
import sys

import pytest

from pipeline import servers


def http_server(directory):
    """A real HTTP server (the standard library's) on the port it is given; GET / answers 200."""
    return lambda port: ([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                          "--directory", str(directory)], dict(os.environ))


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_port_taken_after_it_was_chosen_is_retried_on_another(tmp_path, taken_port, monkeypatch):
    real_free_port = servers.free_port
    chosen = iter([taken_port])  # the first choice is taken by someone else by the time we bind
    monkeypatch.setattr(servers, "free_port", lambda preferred=0: next(chosen, None) or real_free_port())

    log = tmp_path / "server.log"
    proc, port = servers.start_in_group(http_server(tmp_path), "/", log, timeout=30)
    try:
        assert port != taken_port and servers.http_ok(f"http://127.0.0.1:{port}/")
        assert "address already in use" in log.read_text().lower()  # the first attempt, logged
    finally:
        servers.stop_group(proc)
    assert not group_alive(proc.pid)


def test_a_fixed_port_that_is_taken_fails_with_the_servers_own_words(tmp_path, taken_port):
    with pytest.raises(RuntimeError, match=f"before answering http://127.0.0.1:{taken_port}/") as err:
        servers.start_in_group(http_server(tmp_path), "/", tmp_path / "server.log", timeout=30, port=taken_port)
    assert "Address already in use" in str(err.value)


def test_the_preferred_port_is_used_when_free(tmp_path):
    preferred = servers.free_port()
    proc, port = servers.start_in_group(http_server(tmp_path), "/", tmp_path / "server.log", timeout=30,
                                        preferred=preferred)
    try:
        assert port == preferred
    finally:
        servers.stop_group(proc)
