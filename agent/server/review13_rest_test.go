package server

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// handlerRequest sends body to rt through s's handler as uid (its gid
// the same) and returns the status and the answer.
func handlerRequest(s *Server, uid int, rt api.Route, body string) (int, string) {
	r := httptest.NewRequest(rt.Method, rt.Path, bytes.NewReader([]byte(body)))
	r = r.WithContext(context.WithValue(r.Context(), callerKey{}, callerResult{Caller{UID: uid, GID: uid, PID: 1}, nil}))
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// refusedRequest sends one request through the server's handler as a
// local caller with no role (uid/gid 4242, A3 at its weakest: anyone who
// can connect to the socket): it is refused, and the refusal is audited
// through the queue (Agent.RecordRefusal, in a Share).
func refusedRequest(t *testing.T, s *Server) {
	t.Helper()
	if code, body := handlerRequest(s, 4242, api.RouteKeySign, `{"name":"k","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`); code != http.StatusForbidden {
		t.Fatalf("a caller with no role: HTTP %d %s, want 403", code, body)
	}
}

// Attack (A3, any local user who can reach the socket, no role needed;
// also what ordinary refusals do by accident): once the daemon has rested,
// send one request the daemon refuses. The refusal is audited in a Share,
// and the daemon keeps that Share's audit session (KeepShared) as it does
// after any request; but a refusal does not move s.requests, so
// restIfIdle sees no request since its last rest and never rests again.
// The kept session then waits as a saved context behind the resource
// manager for as long as the daemon stays idle: exactly the context-gap
// stall the rest exists to prevent (other clients' session saves fail
// TPM_RC_CONTEXT_GAP after 65,535 of them), re-armed at will by a caller
// the daemon refuses.
// Secure: within two idle ticks after the refusal the TPM holds no session
// of the daemon's. Failed before the mend (idleness was s.requests; it is
// now the TPM's command count).
func TestReview13RefusalAfterRestKeepsSessionForever(t *testing.T) {
	s, ag, _, tp := restServer(t)
	sealAndSign(t, ag)
	var r rester
	s.restIfIdle(&r) // the work above is activity
	s.restIfIdle(&r)
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Fatalf("precondition: the idle daemon rested; the TPM holds %x", got)
	}
	refusedRequest(t, s)
	after := sessionsIn(t, tp)
	t.Logf("sessions in the TPM after one refused request: %x", after)
	for i := 0; i < 4; i++ {
		s.restIfIdle(&r)
	}
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Errorf("four idle ticks after a refused request the daemon still keeps session(s) %x saved behind the resource manager: it never rests again until a counted request comes", got)
	}
}

// The same without any earlier rest: a daemon that served nothing but a
// refusal since it started (rester zero, s.requests 0) must rest too.
// Failed before the mend.
func TestReview13RefusalOnlyDaemonRests(t *testing.T) {
	s, _, _, tp := restServer(t)
	var r rester
	s.restIfIdle(&r) // the first tick after start
	refusedRequest(t, s)
	for i := 0; i < 3; i++ {
		s.restIfIdle(&r)
	}
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Errorf("idle after one refused request, the daemon keeps session(s) %x", got)
	}
}

// keyPublicRequest asks the public key of "k" through the handler as the
// test's own uid (the User role): an operation that sends the TPM nothing
// (Agent.KeyPublic under lockKeep, which leaves the kept sessions be), yet
// counts as a request.
func keyPublicRequest(t *testing.T, s *Server) {
	t.Helper()
	if code, body := handlerRequest(s, os.Getuid(), api.RouteKeyPublic, `{"name":"k"}`); code != http.StatusOK {
		t.Fatalf("key-public: HTTP %d %s", code, body)
	}
}

// Attack (A3 with the User role, or just a monitoring script): one
// key-public request every tick, forever. key-public sends the TPM
// nothing, so behind the resource manager the daemon's kept sessions are
// never loaded (and re-saved, with a new sequence number) by it: they stay
// the TPM's oldest saved session contexts exactly as if the daemon were
// idle, and after 65,535 session saves by other clients every client's
// session save fails TPM_RC_CONTEXT_GAP. But each such request moves
// s.requests, so restIfIdle never sees an idle tick and never rests.
// (Under the shipped unit the watchdog's PCR_Read every 15 s refreshes the
// contexts; without the watchdog, e.g. provd serve from a shell or another
// init, nothing does.)
// Secure: ticks during which the daemon sent the TPM no command count as
// idle for the rest; within a few such ticks the TPM holds no session.
// Failed before the mend.
func TestReview13TPMlessRequestsKeepTheDaemonFromResting(t *testing.T) {
	s, ag, env, tp := restServer(t)
	sealAndSign(t, ag)
	if got := sessionsIn(t, tp); len(got) != 2 {
		t.Fatalf("precondition: a warm daemon keeps 2 sessions; the TPM holds %x", got)
	}
	var r rester
	before := env.TPM.Stats().Commands
	for i := 0; i < 6; i++ {
		keyPublicRequest(t, s)
		if n := env.TPM.Stats().Commands - before; n != 0 && i == 0 {
			t.Logf("key-public sent %d TPM commands", n)
		}
		s.restIfIdle(&r)
	}
	sent := env.TPM.Stats().Commands - before
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Errorf("six ticks in which the daemon sent the TPM %d commands (requests that touch no TPM only): its kept sessions %x were never loaded again, yet it never rested", sent, got)
	}
}

// Attack: a TPM event between the last request and the rest (a reset, a
// power cut, a migration; A1 can force the first two on the bus) behind
// the resource manager. The rest then flushes kept sessions that are gone
// or whose numbers moved (behind the resource manager a stale number is
// flushed, not forgotten: tpm.TPM.ForgetsStale).
// Secure: the rest succeeds (or fails once and is not retried forever),
// nothing of provd's is left in the TPM, a second rest sends nothing, and
// the next seal and sign work and keep their sessions again.
func TestReview13EventBeforeRest(t *testing.T) {
	for _, ev := range swtpmtest.Events {
		t.Run(ev, func(t *testing.T) {
			s, ag, env, tp := restServer(t)
			ctx := context.Background()
			sealAndSign(t, ag)
			env.Event(ev)
			var r rester
			s.restIfIdle(&r)
			err := s.q.do(ctx, clientOf(0), ag.Rest)
			if err != nil {
				t.Logf("rest after the %s: %v", ev, err)
			}
			if got := sessionsIn(t, tp); len(got) != 0 {
				t.Errorf("after the %s and a rest the TPM holds %x", ev, got)
			}
			before := env.TPM.Stats().Commands
			if err := s.q.do(ctx, clientOf(0), ag.Rest); err != nil {
				t.Errorf("a second rest after the %s: %v", ev, err)
			}
			if n := env.TPM.Stats().Commands - before; n != 0 {
				t.Errorf("a second rest after the %s sent %d commands", ev, n)
			}
			sealAndSign(t, ag)
			if got := sessionsIn(t, tp); len(got) != 2 {
				t.Errorf("after the %s, the rest and new requests: the TPM holds %x, want the 2 kept sessions", ev, got)
			}
		})
	}
}
