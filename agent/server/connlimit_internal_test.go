package server

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// An accepted connection half-closes as the unix socket under it does
// (Go's server half-closes a connection it answered before it closes it,
// so that a client still writing reads the answer, not a reset): the
// client reads EOF and can still write.
func TestLimitedConnHalfCloses(t *testing.T) {
	ln, err := net.Listen("unix", review55Abstract(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := &limitedListener{Listener: ln, log: slog.New(slog.DiscardHandler), busy: []byte(`{}`), roleOf: func(Caller) Role { return 0 }}
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cw, ok := s.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", s)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the client read %d, %v after the half-close, want EOF", n, err)
	}
	if _, err := c.Write([]byte("still writing")); err != nil {
		t.Errorf("the client cannot write after the half-close: %v", err)
	}
	b := make([]byte, 13)
	_ = s.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(s, b); err != nil || string(b) != "still writing" {
		t.Errorf("the daemon's side read %q, %v", b, err)
	}
}
