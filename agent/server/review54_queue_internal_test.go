package server

import (
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// FLAW (failed before the mend): a caller with no role takes every place
// in the TPM queue. Mended: refusals' records wait apart from clients'
// requests (maxRefusals of them; past it a refusal is counted in the next
// record).
//
// Attack (A3 at its weakest: a local process that can connect to the socket
// but holds no role; also any user-role caller asking an officer endpoint):
// send max_waiting requests the daemon refuses, at once, while one request
// holds the queue. Every refusal is audited through the clients' queue
// (Server.refuse, s.q.do) and counts against MaxWaiting like an admitted
// operation, waiting up to request_timeout (30 s) for its turn; each then
// sends the TPM an audit record's commands. A user-role caller arriving
// meanwhile is turned away at once, busy (503): a caller the daemon refuses
// denies service to every caller it serves, and can keep doing so by
// re-sending (1,024 connections under the shipped config, fewer than the
// daemon's descriptor limit). docs/threat-model.md says a caller with no
// role costs the daemon a connection ("holds a connection, as before, at
// most the 30 s read timeout"); it costs the whole queue.
//
// The test shortens MaxWaiting to 8 (the shipped 1,024 is the same race at
// scale); the callers are injected as the kernel would report them
// (handlerRequest): uid 4242 with no role, and the test's own uid as the
// user-role caller.
//
// Secure: while only refusals wait, a user-role caller's request is not
// refused busy (refusals audited outside the clients' queue, or under a
// bound of their own, per uid).
func TestReview54RefusedCallersFillTheQueue(t *testing.T) {
	t.Parallel()
	const places = 8
	ts := serveTPM(t, func(s *Server) { s.q = newQueue(places) })
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	ts.Reconfigure(&Roles{Officer: me, User: me}, 20*time.Second, nil)

	release := holdQueue(t, ts.Server, func(stop <-chan struct{}) error { <-stop; return nil })
	var wg sync.WaitGroup
	codes := make(chan int, places)
	for range places {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := handlerRequest(ts.Server, 4242, api.RouteKeyCreate, `{}`)
			codes <- code
		}()
	}
	// Wait until every refusal waits in the queue (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for ts.q.waiting.Load() < places && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := ts.q.waiting.Load(); n < places {
		release()
		wg.Wait()
		t.Fatalf("only %d refusals waiting, want %d", n, places)
	}

	// The user-role caller, now: its request must wait its turn, not be
	// turned away. Sent in a goroutine, answered once the queue moves.
	type answer struct {
		code int
		body string
		took time.Duration
	}
	got := make(chan answer, 1)
	go func() {
		start := time.Now()
		code, body := handlerRequest(ts.Server, os.Getuid(), api.RouteKeyList, "")
		got <- answer{code, body, time.Since(start)}
	}()
	var a answer
	select {
	case a = <-got:
		// Answered while the queue was still held: it was never queued.
	case <-time.After(300 * time.Millisecond):
	}
	release()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusForbidden {
			t.Errorf("a refusal answered HTTP %d, want 403", c)
		}
	}
	if a.code == 0 {
		a = <-got
	}
	if a.code == http.StatusServiceUnavailable || strings.Contains(a.body, "busy") {
		t.Errorf("a user-role caller was turned away after %v while only %d refusals of a caller with no role waited: HTTP %d %s",
			a.took.Round(time.Millisecond), places, a.code, strings.TrimSpace(a.body))
	}
}

// FLAW (failed before the mend): one user-role caller takes every place in
// the TPM queue, and every other caller, of any role, is turned away busy
// at once. Mended: one caller's requests wait up to a quarter of the places
// (queue.perCaller); the test waits for the attacker's to wait or be turned
// away, then sends the other caller's.
//
// Attack (A3, user role: a member of the provd group, which the shipped
// units need for reaching the socket at all): keep max_waiting requests
// waiting (1,024 concurrent connections under the shipped config; cheap
// ones, e.g. key list, or ones that hold the TPM long, e.g. 1 MiB HMACs of
// about a thousand TPM commands each). The queue is first come, first
// served across all callers with one global bound; nothing is per uid, so
// another user and the crypto officer get 503 busy for as long as the flood
// lasts (the watchdog stays fed: the TPM makes progress). This is the
// "one ordinary user broke the daemon for everyone" class again, by count
// instead of by size.
//
// Secure: a second caller's request waits its turn (a per-uid bound on
// waiting requests well below max_waiting, or fair queueing per uid).
func TestReview54OneUserCallerFillsTheQueue(t *testing.T) {
	t.Parallel()
	const places = 8
	ts := serveTPM(t, func(s *Server) { s.q = newQueue(places) })
	const attacker, other = 4243, 4244
	users := RoleMembers{UIDs: []int{attacker, other}}
	ts.Reconfigure(&Roles{User: users}, 20*time.Second, nil)

	release := holdQueue(t, ts.Server, func(stop <-chan struct{}) error { <-stop; return nil })
	var wg sync.WaitGroup
	busy := make(chan struct{}, places)
	for range places {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _ := handlerRequest(ts.Server, attacker, api.RouteKeyList, ""); code == http.StatusServiceUnavailable {
				busy <- struct{}{}
			}
		}()
	}
	// Mended: the attacker's requests wait up to its share, the rest are
	// turned away at once; wait (bounded) until each is one or the other.
	share := ts.q.perCaller
	deadline := time.Now().Add(10 * time.Second)
	for (ts.q.waiting.Load() < share || int64(len(busy)) < places-share) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n, b := ts.q.waiting.Load(), len(busy); n+int64(b) < places {
		release()
		wg.Wait()
		t.Fatalf("of the attacker's %d requests %d wait and %d were turned away", places, n, b)
	}
	type answer struct {
		code int
		body string
	}
	got := make(chan answer, 1)
	go func() {
		code, body := handlerRequest(ts.Server, other, api.RouteKeyList, "")
		got <- answer{code, body}
	}()
	var a answer
	select {
	case a = <-got:
	case <-time.After(300 * time.Millisecond):
	}
	release()
	wg.Wait()
	if a.code == 0 {
		a = <-got
	}
	if a.code == http.StatusServiceUnavailable || strings.Contains(a.body, "busy") {
		t.Errorf("another user-role caller was turned away while one caller's %d requests waited: HTTP %d %s",
			places, a.code, strings.TrimSpace(a.body))
	}
}
