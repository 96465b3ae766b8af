package server

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// Held: a slow or stalled client does not hold the TPM queue, so it cannot
// starve the watchdog's check and have systemd kill the daemon for
// everyone.
//
// Attack (A3, user role): open requests whose bodies trickle (a seal of a
// declared 1 MiB, one byte sent), requests whose answers are never read
// (a pipelined burst of key lists on a connection that never reads), and
// hold them while the watchdog checks. The handler reads the whole body
// before it waits for the queue (io.ReadAll ahead of q.do), and writes
// the answer after the queue is released, so none of them is in the queue
// while it stalls.
//
// Secure (holds): with 16 such clients stalled, the queue is not held,
// nothing waits in it, and Health answers within a second, 3 times over.
func TestReview54StalledClientsDoNotStarveTheWatchdog(t *testing.T) {
	t.Parallel()
	ts := serveTPM(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 16 {
		c, err := net.Dial("unix", ts.sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 0 {
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: provd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", api.RouteSeal.Path, 1<<20)
		} else {
			for range 64 {
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: provd\r\n\r\n", api.RouteKeyList.Path)
			}
		}
	}
	// The pipelined key lists are work the daemon does (512 of them, under
	// -race and a loaded CI a second or more), then their answers stall
	// unread outside the queue: wait, bounded, for that work to end, not a
	// fixed 200 ms (which make test's load outlasted once).
	idle := time.Now()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && time.Since(idle) < 500*time.Millisecond; time.Sleep(10 * time.Millisecond) {
		if _, held := ts.q.heldSince(); held || ts.q.waiting.Load() > 0 {
			idle = time.Now() // a pipelined request still in the queue
		}
	}
	for i := range 3 {
		if _, held := ts.q.heldSince(); held {
			t.Errorf("check %d: the queue is held while only stalled clients are connected", i)
		}
		if n := ts.q.waiting.Load(); n != 0 {
			t.Errorf("check %d: %d requests wait in the queue", i, n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		err := ts.Health(ctx)
		cancel()
		if err != nil || time.Since(start) > time.Second {
			t.Errorf("check %d: Health %v after %v", i, err, time.Since(start))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
