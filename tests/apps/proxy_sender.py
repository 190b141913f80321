#!/usr/bin/env python3
"""A scripted PROXY protocol sender for the lab: opens each connection of a
plan (JSON on stdin), writes its chunks (a header, split as told) with a pause
between them so each lands in its own segment, then a line, and reports
what came back (with "read_to_end": no line; everything the server sends
after the client half-closes). The lab server echoes the first line it reads, so `echo`
shows exactly what the app read first."""
import json
import socket
import sys
import time


def receive(s, until_line):
    """What the server sends: up to the end of a line (`until_line`), else
    until it closes; a timeout ends it too."""
    buf = b""
    while not (until_line and buf.endswith(b"\n")):
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        buf += data
    return buf.decode("latin-1")


def run(conn):
    host, port = conn["to"].rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if conn.get("bind"):
        s.bind((conn["bind"], 0))
    s.settimeout(15)
    s.connect((host, int(port)))
    local = s.getsockname()
    gap = conn.get("gap_ms", 20) / 1000.0
    chunks = [bytes.fromhex(c) for c in conn.get("chunks", [])]
    line = conn.get("line", "").encode() + b"\n"
    if conn.get("line_with_last_chunk") and chunks:
        chunks[-1] += line
        line = b""
    for i, chunk in enumerate(chunks):
        if i:
            time.sleep(gap)
        s.sendall(chunk)
    out = {"line": conn.get("line", ""), "local": "%s:%d" % (local[0], local[1])}
    if conn.get("hold_ms") is not None:
        # An unfinished header: wait, then go.
        time.sleep(conn["hold_ms"] / 1000.0)
        s.close()
        out["held"] = True
        return out
    if conn.get("read_to_end"):
        # The chunks were whole requests: half-close, keep everything the
        # server sends until it closes.
        s.shutdown(socket.SHUT_WR)
        out["reply"] = receive(s, until_line=False)
        s.close()
        return out
    if line:
        time.sleep(gap)
        s.sendall(line)
    out["echo"] = receive(s, until_line=True).rstrip("\n")
    # Later lines, each after a pause, each echoed (the connection outlives
    # whatever the test does meanwhile, e.g. a daemon restart).
    for later in conn.get("later", []):
        time.sleep(later.get("after_ms", 0) / 1000.0)
        s.sendall(later["line"].encode() + b"\n")
        back = receive(s, until_line=True)
        out.setdefault("later_echo", []).append(back.rstrip("\n"))
    time.sleep(conn.get("linger_ms", 0) / 1000.0)
    s.close()
    return out


def concurrent(plan):
    """Every connection of `plan` open at once: each sends its chunks and
    line, then all echoes are read. Prints one summary."""
    socks = []
    for conn in plan["connections"]:
        host, port = conn["to"].rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if conn.get("bind"):
            s.bind((conn["bind"], 0))
        s.settimeout(30)
        s.connect((host, int(port)))
        line = b"" if plan.get("hold") else conn["line"].encode() + b"\n"
        s.sendall(b"".join(bytes.fromhex(c) for c in conn["chunks"]) + line)
        socks.append((s, conn["line"]))
    if plan.get("hold"):
        # Held open as they are (a header pending, or through) until stdin closes.
        print(json.dumps({"open_at_once": len(socks)}), flush=True)
        sys.stdin.read()
        for s, _ in socks:
            s.close()
        return
    ok, wrong = 0, []
    for s, line in socks:
        buf = b""
        while not buf.endswith(b"\n"):
            data = s.recv(4096)
            if not data:
                break
            buf += data
        if buf.decode("latin-1").rstrip("\n") == line:
            ok += 1
        elif len(wrong) < 5:
            wrong.append([line, buf.decode("latin-1")])
    print(json.dumps({"open_at_once": len(socks), "ok": ok, "wrong": wrong}), flush=True)
    time.sleep(plan.get("linger_ms", 0) / 1000.0)
    for s, _ in socks:
        s.close()


def main():
    plan = json.loads(sys.stdin.readline())
    if isinstance(plan, dict):
        concurrent(plan)
        return
    for conn in plan:
        try:
            out = run(conn)
        except OSError as e:
            out = {"line": conn.get("line", ""), "error": str(e)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
