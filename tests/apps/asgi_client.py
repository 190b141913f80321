"""The lab's client for the ASGI app: one HTTP request and one WebSocket to
HOST:PORT; prints {"http": [own address, answer], "ws": [...]} as JSON.

Usage: asgi_client.py HOST PORT
"""
import json
import socket
import sys

from websockets.sync.client import connect

host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port)) as s:
    own = s.getsockname()
    s.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
body = json.loads(data.split(b"\r\n\r\n", 1)[1])
url_host = f"[{host}]" if ":" in host else host
with connect(f"ws://{url_host}:{port}/ws") as ws:
    ws_own = ws.socket.getsockname()
    answer = ws.recv()
    ws.send("bye")
print(
    json.dumps(
        {
            "http": [f"{own[0]} {own[1]}", body["client"]],
            "ws": [f"{ws_own[0]} {ws_own[1]}", answer],
        }
    ),
    flush=True,
)
