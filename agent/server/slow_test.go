package server

import (
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"
)

// Slow clients (headers that never end, a body that never comes) hold a
// connection only until the server's read timeouts, here shortened to keep
// the test quick (the daemon's are 5 s for headers and 30 s for the whole
// request): each is closed, another client is served meanwhile, and no
// goroutine is left behind.
func TestSlowClientsAreCut(t *testing.T) {
	ts := serveTPM(t, func(s *Server) {
		s.hs.ReadHeaderTimeout = 200 * time.Millisecond
		s.hs.ReadTimeout = 500 * time.Millisecond
	})
	runtime.GC()
	g0 := runtime.NumGoroutine()
	sock := ts.sock
	var conns []net.Conn
	for i := range 20 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 0 {
			_, _ = io.WriteString(c, "POST /v1/seal HTTP/1.1\r\nHost: provd\r\n") // headers never end
		} else {
			_, _ = io.WriteString(c, "POST /v1/seal HTTP/1.1\r\nHost: provd\r\nContent-Length: 1000\r\n\r\n{\"data\":") // the body never comes
		}
	}
	if code, b := ts.call(t, "GET", "/v1/status", nil); code != http.StatusOK {
		t.Fatalf("another client during the slow ones: HTTP %d %s", code, b)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c) // the server answers (408/400) or just closes
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("slow client %d: the server kept the connection past its read timeout", i)
		}
		c.Close()
	}
	ts.hc.Transport.(*http.Transport).CloseIdleConnections()
	var g int
	for range 100 {
		runtime.GC()
		if g = runtime.NumGoroutine(); g <= g0+2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g > g0+2 {
		t.Errorf("goroutines %d -> %d after the slow clients were cut", g0, g)
	}
}
