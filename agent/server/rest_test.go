package server

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// restServer is a daemon's agent (KeepSession) on a swtpm opened as a
// resource manager's channel (as /dev/tpmrm0 is), with opts, provisioned
// with one signing key "k", and a Server for it (not serving: the tests
// drive restIfIdle and restWhenIdle, or its Handler, themselves); and the
// TPM's side of the bus.
func restServer(t *testing.T, opts ...swtpmtest.Option) (*Server, *agent.Agent, *swtpmtest.Env, transport.TPM) {
	t.Helper()
	bus := &swtpmtest.Bus{}
	serial := &serialTPM{}
	env := swtpmtest.Start(t, append([]swtpmtest.Option{swtpmtest.WithResourceManager(),
		swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { serial.next = next; return serial }),
		swtpmtest.WithBus(bus)}, opts...)...)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: filepath.Join(t.TempDir(), "state"), KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	ctx := context.Background()
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	s, err := New(Options{Agent: ag, TPM: env.TPM, Roles: &Roles{Officer: me, User: me}})
	if err != nil {
		t.Fatal(err)
	}
	return s, ag, env, bus.Next
}

// serialTPM passes one command at a time to next: the tests' listing on the
// TPM's side of the bus and the daemon's own commands share one channel
// (found by make test under -race: TestRestWhenIdleLoop listed the sessions
// while the rest's goroutine flushed one, and the two wrote one stream).
type serialTPM struct {
	mu   sync.Mutex
	next transport.TPM
}

func (s *serialTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next.Send(cmd)
}

// sealAndSign is a warm daemon's work: a seal (its shared audit session
// kept) then a sign (its policy session kept; any other operation would
// flush that one first).
func sealAndSign(t *testing.T, ag *agent.Agent) {
	t.Helper()
	ctx := context.Background()
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("rest"), PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("rest"))
	if _, err := ag.Sign(ctx, "k", d[:], api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
}

// sessionsIn lists the sessions loaded or saved in the TPM, asked on the
// TPM's side of the bus: the daemon's connection, whose commands are its
// activity, sends nothing.
func sessionsIn(t *testing.T, tp transport.TPM) []tpm2.TPMHandle {
	t.Helper()
	var out []tpm2.TPMHandle
	for _, first := range []tpm2.TPMHandle{tpm.HMACSessions, tpm.PolicySessions} {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}).Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hs.Handle...)
	}
	return out
}

// Behind a resource manager the idle daemon rests: a tick in which it sent
// the TPM commands keeps the kept sessions; the next tick without one ends
// them (no session of the daemon's is left in the TPM, where a saved one
// would count against the context gap for as long as the daemon stays
// idle); a tick after that sends nothing; the next requests work and keep
// their sessions again; and a lone TPM command between two ticks (the
// watchdog's PCR read) puts the rest off by one tick.
func TestDaemonRestsWhenIdle(t *testing.T) {
	s, ag, env, tp := restServer(t)
	sealAndSign(t, ag)
	if got := sessionsIn(t, tp); len(got) != 2 {
		t.Fatalf("a warm daemon keeps 2 sessions (a key use's, the shared audit session); the TPM holds %x", got)
	}
	var r rester
	s.restIfIdle(&r) // the first tick: the work above is activity
	if got := sessionsIn(t, tp); len(got) != 2 {
		t.Errorf("rested in a tick that saw TPM commands: the TPM holds %x", got)
	}
	s.restIfIdle(&r)
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Errorf("an idle tick left sessions in the TPM: %x", got)
	}
	before := env.TPM.Stats().Commands
	s.restIfIdle(&r)
	if n := env.TPM.Stats().Commands - before; n != 0 {
		t.Errorf("a second idle tick sent %d TPM commands", n)
	}
	sealAndSign(t, ag)
	if got := sessionsIn(t, tp); len(got) != 2 {
		t.Errorf("after the rest, a warm daemon keeps 2 sessions again; the TPM holds %x", got)
	}
	s.restIfIdle(&r)
	if _, err := env.TPM.PCRUpdateCounter(); err != nil {
		t.Fatal(err)
	}
	s.restIfIdle(&r)
	if got := sessionsIn(t, tp); len(got) != 2 {
		t.Errorf("rested in a tick that saw a TPM command: the TPM holds %x", got)
	}
	s.restIfIdle(&r)
	if got := sessionsIn(t, tp); len(got) != 0 {
		t.Errorf("the idle tick after new requests left sessions in the TPM: %x", got)
	}
}

// restWhenIdle, as Run starts it behind a resource manager, ends the kept
// sessions within two of its ticks, and stops with its context.
func TestRestWhenIdleLoop(t *testing.T) {
	s, ag, _, tp := restServer(t)
	s.restAfter = 20 * time.Millisecond
	sealAndSign(t, ag)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.restWhenIdle(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(sessionsIn(t, tp)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no rest within 10 s: the TPM holds %x", sessionsIn(t, tp))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}
