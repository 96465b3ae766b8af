package server

import (
	"context"
	"errors"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// Attack: the rest racing requests. restWhenIdle ticks every millisecond
// while three clients send signs, seals, key-public (no TPM command) and
// refused requests through the handler, behind the resource manager and
// its three-session space (SessionLimit). Rest must be serialized with
// every request by the queue and the agent's lock: no request may fail,
// none may meet a session or object slot refusal (a rest between a
// request's commands would flush a session in use), and a final rest
// leaves the TPM without sessions. Run with -race.
func TestReview13RestRacesRequests(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	s, ag, env, _ := restServer(t, swtpmtest.WithWrap(l.Wrap))
	ctx := context.Background()
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	s.restAfter = time.Millisecond
	l.Take()
	send := func(uid int, rt api.Route, body string) (int, string) { return handlerRequest(s, uid, rt, body) }
	rctx, cancel := context.WithCancel(ctx)
	restDone := make(chan struct{})
	go func() { s.restWhenIdle(rctx); close(restDone) }()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	fail := func(what string, code int, body string) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, what+": "+http.StatusText(code)+" "+body)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	digest := `"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="`
	clients := []func(i int){
		func(i int) {
			k := []string{"k", "k2"}[i%2]
			if code, body := send(os.Getuid(), api.RouteKeySign, `{"name":"`+k+`","digest":`+digest+`}`); code != http.StatusOK {
				fail("sign "+k, code, body)
			}
		},
		func(i int) {
			if code, body := send(os.Getuid(), api.RouteSeal, `{"data":"eA==","pcrs":[7]}`); code != http.StatusOK {
				fail("seal", code, body)
			}
			time.Sleep(2 * time.Millisecond)
		},
		func(i int) {
			if i%2 == 0 {
				if code, body := send(os.Getuid(), api.RouteKeyPublic, `{"name":"k"}`); code != http.StatusOK {
					fail("key-public", code, body)
				}
			} else if code, body := send(4242, api.RouteKeySign, `{"name":"k","digest":`+digest+`}`); code != http.StatusForbidden {
				fail("refused sign", code, body)
			}
			time.Sleep(3 * time.Millisecond)
		},
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				c(i)
			}
		}()
	}
	wg.Wait()
	cancel()
	<-restDone
	for _, f := range failures {
		t.Error(f)
	}
	if refused, cmds := l.Take(); refused > 0 {
		t.Errorf("%d refusals for want of a slot in %d commands", refused, len(cmds))
	}
	if err := s.q.do(ctx, clientOf(0), ag.Rest); err != nil && !errors.Is(err, api.ErrBusy) {
		t.Fatal(err)
	}
	if got := sessionsIn(t, env.TPM); len(got) != 0 {
		t.Errorf("after the final rest the TPM holds %x", got)
	}
	t.Logf("requests %d, refused %d, TPM commands %d", s.requests.Load(), s.refused.Load(), env.TPM.Stats().Commands)
}

// Attack: Rest as the queue's waiting request. The rest waited for the
// queue like a request and was counted in maxWaiting: while an operation
// holds the TPM (an RSA-4096 generation takes up to a minute on a discrete
// TPM) an idle tick enqueued the rest, which took a waiting place a
// client's request would have had. With MaxWaiting 1 a client was then
// turned away busy by the daemon's own housekeeping (failed before the
// mend: "TPM queue busy ... (1 requests waiting)").
// Secure: the rest never takes a client's place in the queue: while the
// queue is held it is skipped, and it rests at the next idle tick.
func TestReview13RestTakesAClientsQueuePlace(t *testing.T) {
	s, ag, _, tp := restServer(t)
	s.q = newQueue(1)
	ctx := context.Background()
	sealAndSign(t, ag)
	hold, held, released := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		_ = s.q.do(ctx, clientOf(0), func() error { close(held); <-hold; return nil })
		close(released)
	}()
	<-held
	var r rester
	s.restIfIdle(&r)
	s.restIfIdle(&r) // idle, but the queue is held: skipped, nothing waits
	if n := s.q.waiting.Load(); n != 0 {
		t.Errorf("the rest waits in the queue: %d waiting", n)
	}
	go func() { time.Sleep(100 * time.Millisecond); close(hold) }()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.q.do(cctx, clientOf(0), func() error { return nil }); err != nil {
		t.Errorf("a client's request was turned away beside the daemon's rest (MaxWaiting 1): %v", err)
	}
	<-released
	if got := sessionsIn(t, tp); len(got) != 2 {
		t.Errorf("rested while the queue was held: the TPM holds %x", got)
	}
	s.restIfIdle(&r)
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Errorf("the idle tick after the queue was free left %x", got)
	}
}
