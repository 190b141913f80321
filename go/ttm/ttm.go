// Package ttm gives Go servers the real client behind a full-NAT load
// balancer, as recovered by the ttm agent on the real server.
//
// Listen (or WrapListener) returns a net.Listener whose connections report
// the real client from RemoteAddr(); RealClient asks for one connection.
// Both ask the kernel first — getsockopt(SOL_IP, 1345), which ttm answers
// for services in its compat cgroups — and the ttm daemon's lookup socket
// second, so they work for IPv6 clients on IPv4 listeners (6to4), where
// accept() cannot carry the client. Standard library only.
package ttm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// DefaultSocket is where the ttm daemon answers lookups.
const DefaultSocket = "/run/ttm/ttm.sock"

// PeerSockopt is getsockopt(SOL_IP, PeerSockopt): struct ttm_peer.
const PeerSockopt = 1345

// peerLen is the size of struct ttm_peer {u16 af; be16 port; u8 addr[16]}.
const peerLen = 20

// ErrNoRecord means ttm has no record for the connection: a direct client,
// an untrusted peer, or no option — the kernel's peer is then the client.
var ErrNoRecord = errors.New("ttm: no record for this connection")

// Socket is the lookup socket RealClient falls back to (DefaultSocket, or
// $TTM_SOCKET when set).
var Socket = func() string {
	if s := os.Getenv("TTM_SOCKET"); s != "" {
		return s
	}
	return DefaultSocket
}()

// parsePeer decodes struct ttm_peer: af in host byte order, the port in
// network order, the address (4 or 16 bytes).
func parsePeer(buf [peerLen]byte) (*net.TCPAddr, bool) {
	af := *(*uint16)(unsafe.Pointer(&buf[0]))
	port := int(binary.BigEndian.Uint16(buf[2:4]))
	switch af {
	case syscall.AF_INET:
		return &net.TCPAddr{IP: net.IPv4(buf[4], buf[5], buf[6], buf[7]).To4(), Port: port}, true
	case syscall.AF_INET6:
		ip := make(net.IP, 16)
		copy(ip, buf[4:20])
		return &net.TCPAddr{IP: ip, Port: port}, true
	}
	return nil, false
}

// fromSockopt asks the kernel: getsockopt(fd, SOL_IP, 1345).
func fromSockopt(fd uintptr) (*net.TCPAddr, error) {
	var buf [peerLen]byte
	size := uint32(peerLen)
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, PeerSockopt,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return nil, errno
	}
	if addr, ok := parsePeer(buf); ok {
		return addr, nil
	}
	return nil, ErrNoRecord
}

// fromDaemon asks the ttm daemon about the socket fd, passed with SCM_RIGHTS.
func fromDaemon(socket string, fd uintptr) (*net.TCPAddr, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("ttm: cannot reach the daemon at %s: %w", socket, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := c.WriteMsgUnix([]byte("{\"op\":\"fd\"}\n"), syscall.UnixRights(int(fd)), nil); err != nil {
		return nil, err
	}
	var reply struct {
		Client string `json:"client"`
		Error  string `json:"error"`
	}
	if err := json.NewDecoder(c).Decode(&reply); err != nil {
		return nil, err
	}
	if reply.Error == "not_found" {
		return nil, ErrNoRecord
	}
	if reply.Error != "" {
		return nil, fmt.Errorf("ttm: %s", reply.Error)
	}
	return net.ResolveTCPAddr("tcp", reply.Client)
}

// RealClient returns the real client of conn: from getsockopt(SOL_IP, 1345)
// when the kernel answers it, else from the ttm daemon. ErrNoRecord when
// ttm has none (conn.RemoteAddr() is then the client).
func RealClient(conn *net.TCPConn) (*net.TCPAddr, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var addr *net.TCPAddr
	var lookupErr error
	ctlErr := raw.Control(func(fd uintptr) {
		if addr, lookupErr = fromSockopt(fd); lookupErr == nil {
			return
		}
		addr, lookupErr = fromDaemon(Socket, fd)
	})
	if ctlErr != nil {
		return nil, ctlErr
	}
	return addr, lookupErr
}

// realConn is a connection whose RemoteAddr is the real client.
type realConn struct {
	net.Conn
	client net.Addr
}

func (c *realConn) RemoteAddr() net.Addr { return c.client }

// listener wraps accepted connections.
type listener struct {
	net.Listener
}

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	client, err := RealClient(tcp)
	if err != nil {
		// No record, or ttm unreachable: the kernel's peer stands.
		return c, nil
	}
	return &realConn{Conn: c, client: client}, nil
}

// WrapListener returns l with each accepted TCP connection's RemoteAddr()
// replaced by its real client when ttm has one.
func WrapListener(l net.Listener) net.Listener {
	return listener{l}
}

// Listen is net.Listen with WrapListener applied.
func Listen(network, address string) (net.Listener, error) {
	l, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	return WrapListener(l), nil
}
