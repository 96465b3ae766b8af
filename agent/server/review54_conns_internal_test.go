package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// review54DescriptorLimit is the soft RLIMIT_NOFILE provd.service leaves
// the daemon: its LimitNOFILE= if set, else systemd's default soft limit
// (DefaultLimitNOFILE=1024:524288 since systemd 240), which the Go runtime
// cannot raise because the unit filters setrlimit/prlimit64
// (SystemCallFilter=~@resources, docs/systemd.md).
func review54DescriptorLimit(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "systemd", "provd.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	if m := regexp.MustCompile(`(?m)^LimitNOFILE=(\d+)`).FindStringSubmatch(unit); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	if !regexp.MustCompile(`(?m)^SystemCallFilter=~.*@resources`).MatchString(unit) {
		return 524288 // Go raises the soft limit to the hard one
	}
	return 1024
}

// FLAW (failed before the mend: connLimit, LimitNOFILE=): one local caller holds every descriptor the daemon has.
//
// Attack (A2/A3: any process that can connect to the socket, members of
// the provd group under the shipped units; no role is asked before a
// request is read): open connections and keep them open, each for up to
// the 5 s header timeout (a connection that sends nothing) or 2 min (after
// one request the daemon answers without the queue, e.g. a 404), opening
// new ones as they are cut. The daemon has no connection limit, per caller
// or overall, and under provd.service its descriptor limit is 1,024: no
// LimitNOFILE= and setrlimit filtered (~@resources), so the Go runtime
// cannot raise it. Past that, accept fails (EMFILE) for every other caller,
// and the daemon's own opens (the state's manifest and blobs, the audit
// trail, the journal socket, a TPM reconnect) fail in the middle of other
// callers' operations. An attacker's own limit is no bar (20,000 here;
// several processes otherwise).
//
// The test opens limit+64 connections from one caller (root here; the
// daemon does not ask the role before a request) to a server built as
// `provd serve` builds it, and counts the connections the server holds at
// once (http.Server.ConnState).
//
// Secure: the connections one caller holds at once are bounded well below
// the daemon's descriptor limit (a per-uid cap at accept, e.g. 64, and an
// overall cap below LimitNOFILE=, which the unit raises).
func TestReview54OneCallerHoldsEveryDescriptor(t *testing.T) {
	limit := review54DescriptorLimit(t)
	want := limit + 64
	s := newServer(Options{Roles: &Roles{}, RequestTimeout: time.Second})
	var mu sync.Mutex
	open, peak := 0, 0
	s.hs.ConnState = func(_ net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch st {
		case http.StateNew:
			open++
			peak = max(peak, open)
		case http.StateClosed, http.StateHijacked:
			open--
		}
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range want {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Logf("connection %d refused: %v", i, err)
			break
		}
		conns = append(conns, c)
		if time.Since(start) > 4*time.Second {
			break // within the header timeout: all are held at once
		}
	}
	// Every accepted connection is counted by the server's goroutine;
	// wait (bounded) for the count to settle.
	for range 200 {
		mu.Lock()
		p := peak
		mu.Unlock()
		if p >= len(conns) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	p := peak
	mu.Unlock()
	if p >= limit {
		t.Errorf("one caller held %d connections open at once (in %v); provd.service leaves the daemon %d descriptors in all "+
			"(no LimitNOFILE=, setrlimit filtered by ~@resources): accept and the daemon's own opens then fail with EMFILE for everyone",
			p, time.Since(start).Round(time.Millisecond), limit)
	}
}

// FLAW (failed before the mend: idleTimeout = readTimeout): a caller with no role keeps a connection for 2 minutes, not the
// 30 s docs/threat-model.md states ("a caller with no role holds a
// connection, as before, at most the 30 s read timeout").
//
// Attack (A2/A3, no role): send one request the daemon answers without a
// role and without the queue (an unknown path: 404), with keep-alive, then
// send nothing. The connection is held for IdleTimeout (2 min), four times
// the claimed bound; one request per 2 min per connection keeps any number
// of them (see TestReview54OneCallerHoldsEveryDescriptor).
//
// The test scales the server's timeouts by 1/60 as shipped relative to
// each other (header 5 s -> 83 ms, read 30 s -> 500 ms, idle 2 min -> 2 s)
// and measures when the server closes the idle connection.
//
// Secure: the connection is closed within the (scaled) read timeout plus
// slack, i.e. IdleTimeout <= ReadTimeout, or the claim corrected.
func TestReview54IdleConnectionOutlivesTheClaimedBound(t *testing.T) {
	t.Parallel()
	s := newServer(Options{Roles: &Roles{}, RequestTimeout: time.Second})
	const scale = 60
	s.hs.ReadHeaderTimeout /= scale
	s.hs.ReadTimeout /= scale
	s.hs.IdleTimeout /= scale
	read := s.hs.ReadTimeout
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprint(c, "GET /v1/nothing HTTP/1.1\r\nHost: provd\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	rsp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rsp.Body)
	rsp.Body.Close()
	if rsp.StatusCode != http.StatusNotFound {
		t.Fatalf("HTTP %d, want 404", rsp.StatusCode)
	}
	answered := time.Now()
	bound := read + 500*time.Millisecond
	_ = c.SetReadDeadline(answered.Add(bound))
	_, err = br.ReadByte()
	held := time.Since(answered)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("a caller with no role still holds its connection %v after its answer (scaled read timeout %v; scaled idle timeout %v, "+
			"2 min as shipped, against the 30 s docs/threat-model.md claims)", held.Round(time.Millisecond), read, s.hs.IdleTimeout)
	}
}
