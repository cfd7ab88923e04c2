"""A multi-node BROKER_URL (`amqp://a;amqp://b`): the publisher goes on through the next node.

The shared RabbitMQ plays every node: a port where nothing listens is a node
that is down, and a TCP relay to it, closed mid-run, is a node that dies under
a connected publisher.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

import pika
import pytest

from settings import Settings
from tests.support import dead_letter_arguments, message_count
from transport.publisher import Publisher, wait_all

pytestmark = pytest.mark.integration


class Relay:
    """A TCP relay from a local port to RabbitMQ; `kill()` drops it and every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = [self.server]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def kill(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _url(settings: Settings, port: int) -> str:
    parts = urlsplit(settings.broker_url)
    return parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}").geturl()


def test_a_node_that_is_down_is_passed_over_for_the_next(settings: Settings, queue: str) -> None:
    # Given a BROKER_URL whose first node is down (nothing listens on port 1)
    nodes = [pika.URLParameters(_url(settings, 1)), pika.URLParameters(settings.broker_url)]
    publisher = Publisher(nodes, queue_arguments=dead_letter_arguments, reconnect_seconds=0.05)
    try:
        # When messages are sent, Then RabbitMQ confirms them through the second node
        wait_all(
            [
                publisher.publish(queue, queue, b"{}", message_id=str(n), priority=None)
                for n in range(5)
            ],
            20,
        )
    finally:
        publisher.close()
    assert message_count(settings.broker_url, queue) == 5


def test_a_node_lost_under_a_connected_publisher_fails_over_to_the_next(
    settings: Settings, queue: str
) -> None:
    host, port = urlsplit(settings.broker_url).hostname, urlsplit(settings.broker_url).port
    relay = Relay(host or "127.0.0.1", port or 5672)
    # Given a publisher connected through the first node
    nodes = [
        pika.URLParameters(_url(settings, relay.port)),
        pika.URLParameters(settings.broker_url),
    ]
    publisher = Publisher(nodes, queue_arguments=dead_letter_arguments, reconnect_seconds=0.05)
    try:
        wait_all([publisher.publish(queue, queue, b"{}", message_id="a", priority=None)], 20)
        assert relay.connections == 1
        # When that node dies (its port closed, the connection dropped)
        relay.kill()
        # Then the next sends are confirmed through the second node
        wait_all(
            [
                publisher.publish(queue, queue, b"{}", message_id=f"b{n}", priority=None)
                for n in range(5)
            ],
            20,
        )
        assert publisher.connections_made == 2
    finally:
        publisher.close()
        relay.kill()
    assert message_count(settings.broker_url, queue) == 6
