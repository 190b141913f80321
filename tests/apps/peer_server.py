"""An unmodified-style Python server for the lab: for each accepted
connection it reports what accept(), getpeername() and the TOA getsockopt
return, then echoes the client's line back (the lab client checks the echo).

Usage: peer_server.py LISTEN_HOST PORT COUNT [NAT64_NAME]
"""
import json
import socket
import struct
import sys

TTM_PEER = 1345  # getsockopt(SOL_IP, 1345) -> struct ttm_peer (20 bytes)


def show(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ttm_peer(conn, length=20):
    """The Kingsoft-documented way: unpack('!bbH4s12s'), af's low byte first."""
    try:
        raw = conn.getsockopt(socket.SOL_IP, TTM_PEER, length)
    except OSError as e:
        return {"errno": e.errno}
    af, _, port, ip4, rest = struct.unpack("!bbH4s12s", raw)
    if af == socket.AF_INET:
        client = f"{socket.inet_ntop(socket.AF_INET, ip4)}:{port}"
    else:
        client = f"[{socket.inet_ntop(socket.AF_INET6, ip4 + rest)}]:{port}"
    return {"af": af, "client": client, "len": len(raw)}


def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    nat64 = int(sys.argv[4]) if len(sys.argv) > 4 else None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind((host, port))
    server.listen(128)
    print("listening", flush=True)
    for _ in range(count):
        conn, accepted = server.accept()
        report = {
            "accept": show(accepted),
            "getpeername": show(conn.getpeername()),
            "sockopt": ttm_peer(conn),
            "short": ttm_peer(conn, 16),
            "so_type": conn.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
            "nodelay": conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        }
        if nat64 is not None:
            try:
                report["nat64"] = conn.getsockopt(socket.SOL_IP, nat64, 20).hex()
            except OSError as e:
                report["nat64"] = {"errno": e.errno}
        reader = conn.makefile("rb")
        line = reader.readline()
        conn.sendall(line)
        report["claimed"] = line.decode().strip()
        print(json.dumps(report), flush=True)
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.close()


main()
