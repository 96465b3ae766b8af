package tpm

import (
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// Held: with the stream's lock (8f5bb3a), the idle-restart probe still
// works and costs nothing it did not: a TPM that closes the connection
// while idle (swtpm restarted) is seen by a probe alone, before any
// command (the connection given up once, onLost called, nothing dialed),
// and the next Send dials again and is answered; a probe never dials. A
// probe or Close after Close neither dials nor deadlocks (Close, probe and
// Send take the one lock, none of them calls another under it; onLost,
// called under it, takes no lock of the stream's).
func TestReview60ProbeStillSeesAnIdleClose(t *testing.T) {
	hangUp := make(chan struct{})
	dial, accepted := fakeTPM(t, func(n int64, c net.Conn) {
		if n == 1 {
			answerSuccess(c, hangUp) // the first connection: closed once idle
			return
		}
		answerSuccess(c, nil)
	})
	conn, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	var lost atomic.Int64
	st := &streamTransport{conn: conn, redial: dial, timeout: 5 * time.Second, onLost: func() { lost.Add(1) }}
	cmd := bareCommand()
	if _, err := st.Send(cmd); err != nil {
		t.Fatal(err)
	}
	st.probe()
	if lost.Load() != 0 {
		t.Fatal("a probe of an idle, open connection gave it up")
	}
	close(hangUp)
	for deadline := time.Now().Add(10 * time.Second); lost.Load() == 0 && time.Now().Before(deadline); {
		st.probe()
		runtime.Gosched()
	}
	if lost.Load() != 1 || st.reconnects.Load() != 0 || accepted.Load() != 1 {
		t.Fatalf("after the TPM closed the idle connection: given up %d times, dialed again %d times, %d connections; want 1, 0, 1",
			lost.Load(), st.reconnects.Load(), accepted.Load())
	}
	st.probe() // nothing to probe: no dial
	if _, err := st.Send(cmd); err != nil {
		t.Fatalf("the command after the idle close: %v", err)
	}
	if st.reconnects.Load() != 1 || lost.Load() != 1 {
		t.Fatalf("dialed again %d times, given up %d times; want 1, 1", st.reconnects.Load(), lost.Load())
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.probe()
		_ = st.Close()
		st.probe()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("probe or Close after Close did not return")
	}
	if accepted.Load() != 2 || st.reconnects.Load() != 1 {
		t.Errorf("after Close: %d connections, %d dials again; want 2, 1 (a probe dialed)", accepted.Load(), st.reconnects.Load())
	}
}
