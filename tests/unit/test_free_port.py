"""The ports tests give their servers: free, and never ones the kernel hands to clients."""

from __future__ import annotations

import socket

from tests.support import SERVER_PORTS_FROM, _ephemeral_start, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_can_be_listened_on() -> None:
    ports = {free_port() for _ in range(20)}
    assert all(SERVER_PORTS_FROM <= port < _ephemeral_start() for port in ports), ports
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports.pop()))
        server.listen()
