package ttm

import (
	"encoding/binary"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

func peerBytes(af uint16, port uint16, addr []byte) [peerLen]byte {
	var b [peerLen]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = af
	binary.BigEndian.PutUint16(b[2:4], port)
	copy(b[4:], addr)
	return b
}

func TestParsePeerReadsBothFamilies(t *testing.T) {
	a, ok := parsePeer(peerBytes(syscall.AF_INET, 4242, []byte{10, 0, 1, 2}))
	if !ok || a.String() != "10.0.1.2:4242" {
		t.Fatalf("IPv4: %v %v", a, ok)
	}
	v6 := net.ParseIP("2001:db8::7")
	a, ok = parsePeer(peerBytes(syscall.AF_INET6, 80, v6))
	if !ok || a.String() != "[2001:db8::7]:80" {
		t.Fatalf("IPv6: %v %v", a, ok)
	}
	if _, ok := parsePeer(peerBytes(0, 1, nil)); ok {
		t.Fatal("af 0 is no record")
	}
}

// A stand-in daemon: checks the request line and the passed descriptor,
// answers with reply.
func fakeDaemon(t *testing.T, reply string) string {
	dir := t.TempDir()
	path := filepath.Join(dir, "ttm.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256)
		oob := make([]byte, 64)
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil || !strings.Contains(string(buf[:n]), `"op":"fd"`) {
			t.Errorf("request %q: %v", buf[:n], err)
			return
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Errorf("no descriptor came: %v", err)
			return
		}
		fds, _ := syscall.ParseUnixRights(&msgs[0])
		for _, fd := range fds {
			syscall.Close(fd)
		}
		c.Write([]byte(reply + "\n"))
	}()
	return path
}

func loopbackPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dialed, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accepted, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close(); accepted.Close() })
	return accepted.(*net.TCPConn), dialed.(*net.TCPConn)
}

func TestTheDaemonAnswersWhenTheKernelDoesNot(t *testing.T) {
	accepted, _ := loopbackPair(t)
	Socket = fakeDaemon(t, `{"cookie":7,"client":"[2001:db8::7]:4242","family":"6to4"}`)
	got, err := RealClient(accepted)
	if err != nil || got.String() != "[2001:db8::7]:4242" {
		t.Fatalf("%v %v", got, err)
	}
	Socket = fakeDaemon(t, `{"error":"not_found"}`)
	if _, err := RealClient(accepted); err != ErrNoRecord {
		t.Fatalf("want ErrNoRecord, got %v", err)
	}
}

func TestWithoutTtmTheKernelsPeerStands(t *testing.T) {
	Socket = filepath.Join(t.TempDir(), "absent.sock")
	l, err := Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dialed, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != dialed.LocalAddr().String() {
		t.Fatalf("%v vs %v", c.RemoteAddr(), dialed.LocalAddr())
	}
}
