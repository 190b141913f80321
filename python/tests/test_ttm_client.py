"""Unit tests of ttm_client without a kernel: layouts, the lookup protocol
against a stand-in daemon, and the ASGI middleware."""

import asyncio
import json
import os
import socket
import struct
import tempfile
import threading
import unittest

import ttm_client


class FakeDaemon:
    """Answers each connection's request line with ``reply``; records requests."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = []
        self.fds = []
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "ttm.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
                self.requests.append(json.loads(msg))
                self.fds.append(len(fds))
                for fd in fds:
                    os.close(fd)
                conn.sendall(json.dumps(self.reply).encode() + b"\n")

    def close(self):
        self.server.close()


class Layouts(unittest.TestCase):
    def test_ttm_peer_for_both_families(self):
        v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 4242) + bytes([10, 0, 1, 2]) + bytes(12)
        self.assertEqual(ttm_client.parse_ttm_peer(v4), ("10.0.1.2", 4242, socket.AF_INET))
        v6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 80) + socket.inet_pton(socket.AF_INET6, "2001:db8::7")
        self.assertEqual(ttm_client.parse_ttm_peer(v6), ("2001:db8::7", 80, socket.AF_INET6))
        self.assertIsNone(ttm_client.parse_ttm_peer(bytes(20)))
        self.assertIsNone(ttm_client.parse_ttm_peer(bytes(4)))


class Lookups(unittest.TestCase):
    def setUp(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.dialed = socket.create_connection(self.listener.getsockname())
        self.accepted, _ = self.listener.accept()

    def tearDown(self):
        for s in (self.listener, self.dialed, self.accepted):
            s.close()

    def test_the_daemon_answers_when_the_kernel_does_not(self):
        daemon = FakeDaemon({"cookie": 7, "client": "[2001:db8::7]:4242", "family": "6to4"})
        try:
            found = ttm_client.real_client(self.accepted, daemon.path)
            self.assertEqual(found, ("2001:db8::7", 4242, socket.AF_INET6))
            self.assertEqual(daemon.requests, [{"op": "fd"}])
            self.assertEqual(daemon.fds, [1], "the socket itself went along")
        finally:
            daemon.close()

    def test_no_record_and_no_daemon_are_none(self):
        daemon = FakeDaemon({"error": "not_found"})
        try:
            self.assertIsNone(ttm_client.real_client(self.accepted, daemon.path))
        finally:
            daemon.close()
        self.assertIsNone(ttm_client.real_client(self.accepted, "/nonexistent/ttm.sock"))

    def test_the_asyncio_variant_agrees(self):
        daemon = FakeDaemon({"cookie": 1, "client": "10.0.1.2:4242", "family": "4to4"})
        try:
            found = asyncio.run(ttm_client.real_client_async(self.accepted, daemon.path))
            self.assertEqual(found, ("10.0.1.2", 4242, socket.AF_INET))
        finally:
            daemon.close()


class Middleware(unittest.TestCase):
    def run_app(self, scope, reply):
        daemon = FakeDaemon(reply)
        seen = {}

        async def app(scope, receive, send):
            seen.update(scope)

        async def nothing():
            return {}

        try:
            asyncio.run(ttm_client.TtmMiddleware(app, daemon.path)(scope, nothing, nothing))
        finally:
            daemon.close()
        return seen, daemon.requests

    def test_the_client_is_replaced_for_http_and_websocket(self):
        for kind in ("http", "websocket"):
            scope = {"type": kind, "client": ("10.0.2.1", 50000), "server": ("10.0.2.2", 8000)}
            seen, requests = self.run_app(scope, {"client": "[2001:db8::7]:4242", "family": "6to4"})
            self.assertEqual(seen["client"], ("2001:db8::7", 4242), kind)
            self.assertEqual(requests, [{"op": "tuple", "local": "10.0.2.2:8000", "peer": "10.0.2.1:50000"}])

    def test_without_a_record_and_for_other_scopes_nothing_changes(self):
        scope = {"type": "http", "client": ("10.0.1.9", 1234), "server": ("10.0.2.2", 8000)}
        seen, _ = self.run_app(scope, {"error": "not_found"})
        self.assertEqual(seen["client"], ("10.0.1.9", 1234))
        seen, requests = self.run_app({"type": "lifespan"}, {"error": "not_found"})
        self.assertEqual(seen["type"], "lifespan")
        self.assertEqual(requests, [])


if __name__ == "__main__":
    unittest.main()
