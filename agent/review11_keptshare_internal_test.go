package agent

// Review 11: the daemon's shared audit session kept between requests
// (tpm.TPM.KeepShared, commit c919978), attacked through the daemon's
// Agent on the real swtpm.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review11Side is one daemon (Config.KeepSession) on its own swtpm behind
// A1's bus, and behind the resource manager's session limit when limited.
type review11Side struct {
	env *swtpmtest.Env
	bus *swtpmtest.Bus
	l   *swtpmtest.SessionLimit
	a   *Agent
}

func review11Daemon(t *testing.T, limited bool) review11Side {
	t.Helper()
	s := review11Side{bus: &swtpmtest.Bus{}}
	opts := []swtpmtest.Option{swtpmtest.WithBus(s.bus)}
	if limited {
		s.l = &swtpmtest.SessionLimit{}
		opts = append([]swtpmtest.Option{swtpmtest.WithWrap(s.l.Wrap)}, opts...)
	}
	s.env = swtpmtest.Start(t, opts...)
	a, err := New(Config{TPM: s.env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	s.a = a
	if s.l != nil {
		s.l.Take()
	}
	return s
}

// review11Records is the number of records in a's trail.
func review11Records(t *testing.T, a *Agent) int {
	t.Helper()
	recs, err := audit.ReadRecords(a.auditPath())
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

// review11SessionIndex is the index of session h in cmd's authorization
// area; -1 when cmd does not name it (or is a command not in
// review10Handles).
func review11SessionIndex(cmd []byte, h tpm2.TPMHandle) (tpm2.TPMCC, int) {
	cc := swtpmtest.CommandCode(cmd)
	nh, ok := review10Handles[cc]
	if !ok || h == 0 {
		return cc, -1
	}
	return cc, slices.Index(swtpmtest.Sessions(cmd, nh), h)
}

// review11LostAfterRun is A1 passing the first command that names the
// kept session kept on to the TPM (which runs it) and answering it
// TPM_RC_REFERENCE_S<i> (the session at index i is not loaded): what
// useShared makes once more in a new session.
type review11LostAfterRun struct {
	mu     sync.Mutex
	kept   tpm2.TPMHandle
	fired  bool
	cc     tpm2.TPMCC
	realRC tpm2.TPMRC
	after  []tpm2.TPMCC // the commands after the forgery
}

func (f *review11LostAfterRun) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fired {
		f.after = append(f.after, swtpmtest.CommandCode(cmd))
		return nil, nil, false
	}
	cc, i := review11SessionIndex(cmd, f.kept)
	if i < 0 {
		return nil, nil, false
	}
	rsp, err := next.Send(cmd)
	if err != nil {
		return nil, err, true
	}
	f.fired, f.cc = true, cc
	f.realRC = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	return swtpmtest.ErrorAnswer(tpm2.TPMRCReferenceS0 + tpm2.TPMRC(i)), nil, true
}

// review11Ops is each daemon operation that runs in a Share, in an order
// that gives each its inputs; b is the duplicate's receiver.
func review11Ops(t *testing.T, A, B review11Side) []struct {
	name string
	onB  bool
	fn   func() error
} {
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 7})
	a, b := A.a, B.a
	var peerB api.PeerIdentity
	var dup api.DupFile
	var sealed []byte
	var wrapped []byte
	req, _ := kekRequest(t, "kek", "", 32)
	return []struct {
		name string
		onB  bool
		fn   func() error
	}{
		{"record refusal", false, func() error { return a.RecordRefusal(ctx, "key-delete", "review 11") }},
		{"record fault", false, func() error { return a.RecordFault(ctx, "key-delete", "review 11") }},
		{"key create ecc", false, func() error {
			_, err := a.CreateKey(ctx, api.CreateRequest{Name: "p256", Type: "ecc-p256", Extractable: true})
			return err
		}},
		{"key create rsa", false, func() error {
			_, err := a.CreateKey(ctx, api.CreateRequest{Name: "rsa", Type: "rsa-2048"})
			return err
		}},
		{"seal", false, func() (err error) {
			sealed, err = a.Seal(ctx, api.SealRequest{Data: []byte("review 11 secret"), PCRs: []int{7}})
			return err
		}},
		{"unseal", false, func() error {
			got, err := a.Unseal(ctx, sealed)
			if err == nil && string(got) != "review 11 secret" {
				return fmt.Errorf("unsealed %q", got)
			}
			return err
		}},
		{"failed unseal (its record)", false, func() error {
			bad := append([]byte(nil), sealed...)
			bad[len(bad)-1] ^= 1
			if _, err := a.Unseal(ctx, bad); err == nil {
				return errors.New("a changed blob unsealed")
			}
			return nil
		}},
		{"peer identity (B)", true, func() (err error) { peerB, err = b.PeerIdentity(ctx); return err }},
		{"dup export (A)", false, func() (err error) {
			dup, err = a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerB, Approval: approveDup(t, a, "p256", peerB), EKCA: caBundle(t, B.env)})
			return err
		}},
		{"dup import (B)", true, func() error { _, err := b.DupImport(ctx, api.DupImportRequest{Name: "p256", Dup: dup}); return err }},
		{"key delete", false, func() error { return a.DeleteKey(ctx, "rsa") }},
		{"kek import", false, func() error { _, err := a.ImportKEK(ctx, req); return err }},
		{"key export", false, func() (err error) {
			wrapped, err = a.ExportKey(ctx, api.KeyExportRequest{Name: "p256", KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "p256", "kek")})
			return err
		}},
		{"kek import (unwrap)", false, func() error {
			r := req
			r.Name, r.Usage = "kek-u", "unwrap"
			_, err := a.ImportKEK(ctx, r)
			return err
		}},
		{"key import", false, func() error {
			_, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "imp", KEK: "kek-u", Wrapped: wrapped})
			return err
		}},
		{"key derive", false, func() error {
			_, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "h", Label: "mac", Type: "hmac-sha256",
				Approval: approveRecipe(t, a, officer.Recipe{Type: "hmac-sha256", Label: "mac"})})
			return err
		}},
		{"attest identity", false, func() error { _, err := a.AttestIdentity(ctx); return err }},
		{"attest quote", false, func() error {
			nonce := sha256.Sum256([]byte("review 11"))
			_, err := a.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7}}})
			return err
		}},
		{"provision --force", false, func() error {
			_, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true})
			return err
		}},
	}
}

// review11Warm makes sure s's daemon keeps a shared session (a refusal
// recorded in a Share) and returns it.
func review11Warm(t *testing.T, s review11Side) tpm2.TPMHandle {
	t.Helper()
	if h := s.a.t.SharedHandle(); h != 0 {
		return h
	}
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 9})
	if err := s.a.RecordRefusal(ctx, "key-delete", "warm"); err != nil {
		t.Fatalf("warm record: %v", err)
	}
	h := s.a.t.SharedHandle()
	if h == 0 {
		t.Fatal("no shared session kept after a record")
	}
	return h
}

// review11Again runs op again, unattacked, after a request that failed:
// the request after it must work (and gives the operations after it
// their inputs).
func review11Again(t *testing.T, name string, fn func() error, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if err := fn(); err != nil {
		t.Errorf("%s: the same request again, unattacked: %v", name, err)
	}
}

// review11Clean checks what must hold after any request: nothing loaded
// beyond what the daemon holds, the trail verifying, the lockout counter
// at lockout, and a next request that works.
func review11Clean(t *testing.T, what string, s review11Side, lockout uint32) {
	t.Helper()
	if extra := unheldLeft(t, s.a); len(extra) > 0 {
		t.Errorf("%s: left loaded beyond what the daemon holds: %x (held %x)", what, extra, s.a.heldHandles())
	}
	if n := swtpmtest.LockoutCounter(t, s.bus.Next); n != lockout {
		t.Errorf("%s: the lockout counter moved from %d to %d", what, lockout, n)
	}
	if _, err := s.a.AuditVerify(context.Background()); err != nil {
		t.Errorf("%s: the trail does not verify: %v", what, err)
	}
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 9})
	if err := s.a.RecordRefusal(ctx, "key-delete", "next request"); err != nil {
		t.Errorf("%s: the next request failed: %v", what, err)
	}
}

// review11ForgedLost mounts attack 2 on every daemon operation (A1
// forges TPM_RC_REFERENCE_S<i> on the first use, in the request, of the
// session kept from the request before, after the TPM ran the command;
// useShared makes that use once more in a new session) and checks what
// must hold whatever the operation's outcome: nothing is left loaded
// beyond what the daemon holds, the lockout counter does not move, the
// operation is recorded once (provision: twice, as without the attack),
// the trail verifies and the next request works. It returns each
// operation's error.
func review11ForgedLost(t *testing.T) map[string]error {
	A, B := review11Daemon(t, false), review11Daemon(t, false)
	lockA, lockB := swtpmtest.LockoutCounter(t, A.bus.Next), swtpmtest.LockoutCounter(t, B.bus.Next)
	errs := map[string]error{}
	fired := 0
	for _, op := range review11Ops(t, A, B) {
		s, lock := A, lockA
		if op.onB {
			s, lock = B, lockB
		}
		f := &review11LostAfterRun{kept: review11Warm(t, s)}
		before := review11Records(t, s.a)
		s.bus.Set(f.hook)
		err := op.fn()
		s.bus.Set(nil)
		errs[op.name] = err
		if !f.fired {
			t.Logf("%s: never used the kept session", op.name)
		} else {
			fired++
			t.Logf("%s: forged REFERENCE on %v (the TPM answered 0x%x); then %v; err %v", op.name, f.cc, uint32(f.realRC), f.after, err)
		}
		most := 1
		if strings.HasPrefix(op.name, "provision") {
			most = 2 // its new anchor's first record, then its own
		}
		if n := review11Records(t, s.a) - before; n > most {
			t.Errorf("%s: %d records for one request", op.name, n)
		}
		review11Clean(t, op.name, s, lock)
		review11Again(t, op.name, op.fn, err)
	}
	if fired == 0 {
		t.Fatal("the attack never fired")
	}
	return errs
}

// Attack 2, what must hold whatever the outcome (review11ForgedLost).
func TestReview11ForgedLostSessionAfterRunLeavesNothing(t *testing.T) {
	t.Parallel()
	review11ForgedLost(t)
}

// Attack 2, the outcome: an operation whose kept session's first use A1
// answered TPM_RC_REFERENCE_S<i> after the TPM ran it either works (the
// use made again) or fails as forged (exit 15): never as the platform's
// policy not satisfied (exit 3), or the TPM out of memory.
//
// Failed before the mend (review 11): the retry ran the whole command again, including
// the other sessions in it, which the first run spent: key import's
// TPM2_Import (the PK's policy session at S0, the shared guard at S1)
// is then refused POLICY_FAIL and reported as tpm.ErrPolicyNotSatisfied;
// and a retried load or CreateLoaded (dup import, key derive) leaves the
// first object loaded until the sweep after the request, so the request
// fails with TPM_RC_OBJECT_MEMORY.
func TestReview11ForgedLostSessionIsReportedAsForged(t *testing.T) {
	t.Parallel()
	for name, err := range review11ForgedLost(t) {
		if err != nil && !errors.Is(err, tpm.ErrResponseForged) {
			t.Errorf("%s: a forged TPM_RC_REFERENCE after the TPM ran the command failed the request as other than forged (policy: %v): %v",
				name, errors.Is(err, tpm.ErrPolicyNotSatisfied), err)
		}
	}
}

// Attack 1: between two requests A1 swaps the kept session for one of its
// own at the same handle (unsalted, no symmetric cipher). The next
// request, whose first use of the kept session then meets A1's session,
// works (in a new session) or fails as forged (or BAD_AUTH, exit 11); it
// never takes an answer, never moves the lockout counter, and leaves
// nothing loaded but A1's own session at most (which A1 flushes).
//
// Failed before the mend (review 11): where the first use is the guard role of a creation
// or an import (peer identity, attest identity, key import, key derive),
// the TPM refuses the decrypt attribute of A1's cipherless session with
// TPM_RC_SYMMETRIC at the guard's index, before any HMAC, and the request
// fails with a plain TPM error (exit 1), not as forged: the guard's
// role-bit refusal (TPM_RC_ATTRIBUTES) is mapped to forged, this one is
// not.
func TestReview11SwappedKeptSession(t *testing.T) {
	t.Parallel()
	A, B := review11Daemon(t, false), review11Daemon(t, false)
	lockA, lockB := swtpmtest.LockoutCounter(t, A.bus.Next), swtpmtest.LockoutCounter(t, B.bus.Next)
	for _, op := range review11Ops(t, A, B) {
		s, lock := A, lockA
		if op.onB {
			s, lock = B, lockB
		}
		kept := review11Warm(t, s)
		swtpmtest.SwapSession(t, s.bus.Next, kept)
		own := kept
		err := op.fn()
		t.Logf("%s: %v", op.name, err)
		// Forged (exit 15), or the TPM's BAD_AUTH of a command no wrong
		// value explains (exit 11: "a wrong value or a command changed on
		// the bus", as documented for a refused HMAC in the shared session).
		if err != nil && !errors.Is(err, tpm.ErrResponseForged) && !errors.Is(err, tpm.ErrBadAuth) {
			t.Errorf("%s with the kept session swapped for A1's: failed as other than forged (exit %d): %v", op.name, api.ExitCode(err), err)
		}
		_, _ = (tpm2.FlushContext{FlushHandle: own}).Execute(s.bus.Next) // A1's, if still there
		review11Clean(t, op.name, s, lock)
		review11Again(t, op.name, op.fn, err)
	}
}

// review11Event makes an honest TPM event on s: reset, power cut, migrate,
// hibernate (resumed by firmware) or hibernate without resume.
func review11Event(s review11Side, name string) {
	switch name {
	case "hibernate":
		s.env.Hibernate(true)
	case "hibernate, no resume":
		s.env.Hibernate(false)
	default:
		s.env.Event(name)
	}
}

// Attack 4: honest events (a reset, a power cut, a migration, a
// hibernation with and without resume) between two requests, with the
// shared session kept, before every daemon operation; and (not
// hibernation: it comes between operations) right after the first
// command that uses the kept session inside it. Never forged, nothing left
// beyond what the daemon holds, the trail verifies, the next request works.
func TestReview11HonestEventsAroundTheKeptSession(t *testing.T) {
	t.Parallel()
	events := []string{"reset", "power cut", "migrate", "hibernate", "hibernate, no resume"}
	for _, inside := range []bool{false, true} {
		for _, ev := range events {
			if inside && strings.HasPrefix(ev, "hibernate") {
				continue
			}
			t.Run(fmt.Sprintf("%s/inside=%v", ev, inside), func(t *testing.T) {
				A, B := review11Daemon(t, false), review11Daemon(t, false)
				lockA, lockB := swtpmtest.LockoutCounter(t, A.bus.Next), swtpmtest.LockoutCounter(t, B.bus.Next)
				for _, op := range review11Ops(t, A, B) {
					s, lock := A, lockA
					if op.onB {
						s, lock = B, lockB
					}
					kept := review11Warm(t, s)
					done := false
					if inside {
						s.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
							if _, i := review11SessionIndex(cmd, kept); done || i < 0 {
								return nil, nil, false
							}
							rsp, err := next.Send(cmd)
							done = true
							review11Event(s, ev)
							return rsp, err, true
						})
					} else {
						review11Event(s, ev)
					}
					err := op.fn()
					s.bus.Set(nil)
					if err != nil {
						t.Logf("%s (%s, inside %v, done %v): %v", op.name, ev, inside, done, err)
					}
					if errors.Is(err, tpm.ErrResponseForged) {
						t.Errorf("%s: an honest %s reported as forged: %v", op.name, ev, err)
					}
					review11Clean(t, op.name+" after "+ev, s, lock)
					review11Again(t, op.name, op.fn, err)
				}
			})
		}
	}
}

// review11Workload is one round of daemon requests on A (and B, the
// duplicate's receiver), run by several goroutines at once, as the
// daemon's clients send them: key uses that keep their policy session,
// audited operations that keep the shared one, and the operations that
// hold three sessions at once (dup import, peer identity). It returns the
// errors by request.
func review11Workload(t *testing.T, A, B review11Side, round int, peerB api.PeerIdentity) map[string]error {
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 5})
	a, b := A.a, B.a
	var mu sync.Mutex
	errs := map[string]error{}
	note := func(name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		errs[name] = err
	}
	var wg sync.WaitGroup
	for g := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 {
				tag := fmt.Sprintf("r%d-g%d-%d", round, g, i)
				switch g {
				case 0:
					d := sha256.Sum256([]byte(tag))
					_, err := a.Sign(ctx, "s", d[:], api.SignOptions{})
					note("sign "+tag, err)
				case 1:
					blob, err := a.Seal(ctx, api.SealRequest{Data: []byte(tag), PCRs: []int{7}})
					note("seal "+tag, err)
					if err == nil {
						got, err := a.Unseal(ctx, blob)
						if err == nil && string(got) != tag {
							err = fmt.Errorf("unsealed %q", got)
						}
						note("unseal "+tag, err)
					}
				case 2:
					note("refusal "+tag, a.RecordRefusal(ctx, "key-delete", tag))
					_, err := a.Status(ctx)
					note("status "+tag, err)
				case 3:
					_, err := a.CreateKey(ctx, api.CreateRequest{Name: "c" + tag, Type: "ecc-p256"})
					note("create "+tag, err)
					if err == nil {
						note("delete "+tag, a.DeleteKey(ctx, "c"+tag))
					}
				case 4:
					_, err := a.CreateKey(ctx, api.CreateRequest{Name: "x" + tag, Type: "ecc-p256", Extractable: true})
					note("create extractable "+tag, err)
					if err != nil {
						continue
					}
					dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "x" + tag, Peer: peerB, Approval: approveDup(t, a, "x"+tag, peerB), EKCA: caBundle(t, B.env)})
					note("dup export "+tag, err)
					imported := false
					if err == nil {
						_, err = b.DupImport(ctx, api.DupImportRequest{Name: "x" + tag, Dup: dup})
						note("dup import "+tag, err)
						imported = err == nil
					}
					_, err = b.PeerIdentity(ctx)
					note("peer identity "+tag, err)
					d := sha256.Sum256([]byte(tag))
					if imported {
						_, err = b.Sign(ctx, "x"+tag, d[:], api.SignOptions{})
						note("sign imported "+tag, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

// Attack 3: the kept shared session beside the key uses' kept policy
// session, with requests from several goroutines (run with -race), behind
// the resource manager's three sessions per connection. Without A1: every
// request works, with no refusal for want of a slot. Then A1 drops one
// session flush on each side (liveSessions misses a session): requests
// may meet the limit (as without keeping: the threat model's row), but
// afterwards a serial round works with no refusal, and nothing is left
// beyond what the daemons hold.
func TestReview11SlotsUnderConcurrentRequests(t *testing.T) {
	t.Parallel()
	A, B := review11Daemon(t, true), review11Daemon(t, true)
	ctx := context.Background()
	if _, err := A.a.CreateKey(ctx, api.CreateRequest{Name: "s", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	peerB, err := B.a.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	A.l.Take()
	B.l.Take()
	for name, err := range review11Workload(t, A, B, 0, peerB) {
		if err != nil {
			t.Errorf("%s (no A1): %v", name, err)
		}
	}
	for _, s := range []review11Side{A, B} {
		if refused, cmds := s.l.Take(); refused > 0 {
			t.Errorf("no A1: %d refusals for want of a slot (%d commands)", refused, len(cmds))
		}
		if extra := unheldLeft(t, s.a); len(extra) > 0 {
			t.Errorf("no A1: left beyond what the daemon holds: %x", extra)
		}
	}
	// A1 drops one session flush on each side.
	dA, dB := swtpmtest.DropFirstSessionFlush(A.bus), swtpmtest.DropFirstSessionFlush(B.bus)
	failed := 0
	for name, err := range review11Workload(t, A, B, 1, peerB) {
		if err != nil {
			failed++
			t.Logf("%s (one flush dropped): %v", name, err)
		}
	}
	t.Logf("one flush dropped (A 0x%x, B 0x%x): %d requests failed", *dA, *dB, failed)
	A.bus.Set(nil)
	B.bus.Set(nil)
	// A1's session, if the sweep has not flushed it (and its number is
	// not the daemon's by now), goes: it is A1's, not provd's.
	for _, c := range []struct {
		s review11Side
		h tpm2.TPMHandle
	}{{A, *dA}, {B, *dB}} {
		if c.h != 0 && !slices.Contains(c.s.a.heldHandles(), c.h) {
			_, _ = (tpm2.FlushContext{FlushHandle: c.h}).Execute(c.s.bus.Next)
		}
	}
	A.l.Take()
	B.l.Take()
	// Serially, after it: every request works, no refusal.
	for name, err := range review11Workload(t, A, B, 2, peerB) {
		if err != nil {
			t.Errorf("%s (after the dropped flush): %v", name, err)
		}
	}
	for _, s := range []review11Side{A, B} {
		if refused, _ := s.l.Take(); refused > 0 {
			t.Errorf("after the dropped flush: %d refusals for want of a slot", refused)
		}
		if extra := unheldLeft(t, s.a); len(extra) > 0 {
			t.Errorf("at the end: left beyond what the daemon holds: %x", extra)
		}
		if _, err := s.a.AuditVerify(ctx); err != nil {
			t.Errorf("the trail: %v", err)
		}
	}
}
