package agent

// Review 10: the spare policy session (tpm.PolicySession.Spare) in every
// caller of withFreshSession, across operations, in provision's two
// records, in the daemon under concurrent requests, beside the leak sweep,
// and in the logs.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review10Handles is the number of handles of each command provd sends
// with sessions (as tpm.commandHandles), and review10Auths how many of them
// take an authorization (the first sessions authorize them, in order).
var review10Handles = map[tpm2.TPMCC]int{
	tpm2.TPMCCGetRandom: 0, tpm2.TPMCCGetCapability: 0, tpm2.TPMCCPCRRead: 0, tpm2.TPMCCLoadExternal: 0, tpm2.TPMCCHash: 0,
	tpm2.TPMCCLoad: 1, tpm2.TPMCCCreate: 1, tpm2.TPMCCCreateLoaded: 1, tpm2.TPMCCCreatePrimary: 1, tpm2.TPMCCSign: 1,
	tpm2.TPMCCQuote: 1, tpm2.TPMCCUnseal: 1, tpm2.TPMCCReadPublic: 1, tpm2.TPMCCNVReadPublic: 1, tpm2.TPMCCNVDefineSpace: 1,
	tpm2.TPMCCPCRExtend: 1, tpm2.TPMCCPCRReset: 1, tpm2.TPMCCImport: 1, tpm2.TPMCCHMAC: 1,
	tpm2.TPMCCHMACStart: 1, tpm2.TPMCCSequenceUpdate: 1, tpm2.TPMCCSequenceComplete: 1, tpm2.TPMCCEncryptDecrypt2: 1,
	tpm2.TPMCCECDHZGen: 1, tpm2.TPMCCRSADecrypt: 1, tpm2.TPMCCVerifySignature: 1,
	tpm2.TPMCCNVRead: 2, tpm2.TPMCCNVWrite: 2, tpm2.TPMCCNVIncrement: 2, tpm2.TPMCCNVExtend: 2, tpm2.TPMCCNVWriteLock: 2,
	tpm2.TPMCCNVUndefineSpace: 2, tpm2.TPMCCEvictControl: 2, tpm2.TPMCCPolicySecret: 2, tpm2.TPMCCDuplicate: 2,
	tpm2.TPMCCActivateCredential: 2, tpm2.TPMCCCertify: 2, tpm2.TPMCCObjectChangeAuth: 2,
	tpm2.TPMCCPolicyNV: 3, tpm2.TPMCCPolicyAuthorizeNV: 3,
}

var review10Auths = map[tpm2.TPMCC]int{
	tpm2.TPMCCActivateCredential: 2, tpm2.TPMCCCertify: 2,
	tpm2.TPMCCReadPublic: 0, tpm2.TPMCCNVReadPublic: 0, tpm2.TPMCCPCRRead: 0, tpm2.TPMCCGetRandom: 0,
	tpm2.TPMCCGetCapability: 0, tpm2.TPMCCLoadExternal: 0, tpm2.TPMCCHash: 0, tpm2.TPMCCVerifySignature: 0,
}

// review10PolicyAt is, for each policy command, the index of its
// policySession among its handles.
var review10PolicyAt = map[tpm2.TPMCC]int{
	tpm2.TPMCCPolicySecret: 1, tpm2.TPMCCPolicySigned: 1, tpm2.TPMCCPolicyNV: 2, tpm2.TPMCCPolicyAuthorizeNV: 2,
	tpm2.TPMCCPolicyPCR: 0, tpm2.TPMCCPolicyAuthValue: 0, tpm2.TPMCCPolicyCommandCode: 0, tpm2.TPMCCPolicyOR: 0,
	tpm2.TPMCCPolicyAuthorize: 0, tpm2.TPMCCPolicyCpHash: 0, tpm2.TPMCCPolicyNameHash: 0,
	tpm2.TPMCCPolicyDuplicationSelect: 0, tpm2.TPMCCPolicyPassword: 0, tpm2.TPMCCPolicyCounterTimer: 0,
	tpm2.TPMCCPolicyLocality: 0, tpm2.TPMCCPolicyTicket: 0, tpm2.TPMCCPolicyNvWritten: 0,
	tpm2.TPMCCPolicyPhysicalPresence: 0, tpm2.TPMCCPolicyTemplate: 0,
}

// review10Session is what the tracker knows of one policy session.
type review10Session struct {
	used    bool         // it authorized a command the TPM made
	dirty   tpm2.TPMCC   // a policy command since its last use (0: none)
	lastUse time.Time    // when it last authorized one
	by      tpm2.TPMCC   // the command it last authorized
	started time.Time    // its StartAuthSession
	proofs  []tpm2.TPMCC // what the proofs in it were for, in order
}

// review10Tracker follows every policy session on the bus (an honest
// one): which authorized a command and whether a policy command went into
// it after. It counts a gate proof (TPM2_PolicySecret) into a session that
// authorized a command before (a spare, or PrepareGatedExtendAgain's), and
// what must never be: such a proof into a session holding a policy applied
// after its last authorized command, or one into a session more than half
// a proof's lifetime after its last authorized command; and every refused
// PolicySecret, NV_Extend or NV_Increment (an honest bus: each refusal is
// a record or an increment that failed).
type review10Tracker struct {
	mu       sync.Mutex
	sessions map[tpm2.TPMHandle]*review10Session
	reused   int                // proofs into a session used before
	reusedBy map[tpm2.TPMCC]int // ... by what that session last authorized
	bad      []string           // violations
	refused  []string           // refused proofs, extends, increments
	order    []tpm2.TPMCC       // every command (for the log)
}

func newReview10Tracker() *review10Tracker {
	return &review10Tracker{sessions: map[tpm2.TPMHandle]*review10Session{}, reusedBy: map[tpm2.TPMCC]int{}}
}

func (r *review10Tracker) take() (reused int, by map[tpm2.TPMCC]int, bad, refused []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reused, by, bad, refused = r.reused, r.reusedBy, r.bad, r.refused
	r.reused, r.reusedBy, r.bad, r.refused = 0, map[tpm2.TPMCC]int{}, nil, nil
	return reused, by, bad, refused
}

func (r *review10Tracker) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	cc := swtpmtest.CommandCode(cmd)
	handle := func(i int) tpm2.TPMHandle {
		off := 10 + 4*i
		if len(cmd) < off+4 {
			return 0
		}
		return tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[off:]))
	}
	var into tpm2.TPMHandle
	if i, ok := review10PolicyAt[cc]; ok {
		into = handle(i)
	}
	now := time.Now()
	r.mu.Lock()
	if cc == tpm2.TPMCCPolicySecret {
		if s := r.sessions[into]; s != nil && s.used {
			r.reused++
			r.reusedBy[s.by]++
			if s.dirty != 0 {
				r.bad = append(r.bad, fmt.Sprintf("a gate proof into session 0x%08x, which holds %v applied after it authorized %v", uint32(into), s.dirty, s.by))
			}
			if age := now.Sub(s.started); age > 5*time.Second+500*time.Millisecond {
				r.bad = append(r.bad, fmt.Sprintf("a gate proof into session 0x%08x started %v ago", uint32(into), age))
			}
		}
	}
	r.mu.Unlock()
	rsp, err := next.Send(cmd)
	if err != nil || len(rsp) < 10 {
		return rsp, err, true
	}
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order = append(r.order, cc)
	switch cc {
	case tpm2.TPMCCStartAuthSession:
		if rc == tpm2.TPMRCSuccess && len(rsp) >= 14 {
			h := tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
			if h>>24 == 0x03 {
				r.sessions[h] = &review10Session{started: now}
			}
		}
		return rsp, err, true
	case tpm2.TPMCCFlushContext:
		if h := handle(0); rc == tpm2.TPMRCSuccess {
			delete(r.sessions, h)
		}
		return rsp, err, true
	case tpm2.TPMCCPolicySecret, tpm2.TPMCCNVExtend, tpm2.TPMCCNVIncrement:
		if rc != tpm2.TPMRCSuccess {
			r.refused = append(r.refused, fmt.Sprintf("%v answered 0x%x", cc, uint32(rc)))
		}
	}
	if rc != tpm2.TPMRCSuccess {
		return rsp, err, true
	}
	if into != 0 {
		if s := r.sessions[into]; s != nil {
			s.dirty = cc
			if cc == tpm2.TPMCCPolicySecret {
				s.proofs = append(s.proofs, cc)
			}
		}
	}
	nh, ok := review10Handles[cc]
	if !ok {
		return rsp, err, true
	}
	na, ok := review10Auths[cc]
	if !ok {
		na = 1
	}
	for i, h := range swtpmtest.Sessions(cmd, nh) {
		if i >= na {
			break
		}
		if s := r.sessions[h]; s != nil {
			s.used, s.dirty, s.lastUse, s.by = true, 0, now, cc
		}
	}
	return rsp, err, true
}

// review10Check fails t for what r saw since its last take, and returns
// the proofs made into a session used before.
func review10Check(t *testing.T, what string, r *review10Tracker) int {
	t.Helper()
	reused, by, bad, refused := r.take()
	for _, b := range bad {
		t.Errorf("%s: %s", what, b)
	}
	for _, f := range refused {
		t.Errorf("%s: an honest run, yet %s", what, f)
	}
	t.Logf("%s: %d gate proofs into a session used before (that session last authorized: %v)", what, reused, by)
	return reused
}

// review10Ops counts the records of op by uid in a's trail.
func review10Ops(t *testing.T, a *Agent, uid int, op string) int {
	t.Helper()
	recs, err := audit.ReadRecords(a.auditPath())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.UID == uid && r.Op == op {
			n++
		}
	}
	return n
}

// Attack 1: every operation (everyOperation, on two TPMs behind the
// resource manager's session limit) with the tracker on both buses. What
// must hold: no gate proof goes into a session holding a policy applied
// after its last authorized command (a spare kept with its policy still
// satisfied), nor into one older than half a proof's lifetime; no honest
// PolicySecret, NV_Extend or NV_Increment is refused (a record's extend
// failing for an honest run); no refusal for want of a slot; nothing left
// that provd does not hold; the trail verifies. And the spare is used
// (mounted): some proofs go into a session used before.
func TestReview10EveryOperationProvesOnlyInACleanSession(t *testing.T) {
	t.Parallel()
	A, B := limitedPair(t)
	rA, rB := newReview10Tracker(), newReview10Tracker()
	A.bus.Set(rA.hook)
	B.bus.Set(rB.hook)
	reused := 0
	everyOperation(t, A.a, B.a, B.env, func(onB bool, name string, fn func() error) {
		t.Helper()
		side, r := A, rA
		if onB {
			side, r = B, rB
		}
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		reused += review10Check(t, name, r)
		if refused, cmds := side.l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot: %v", name, refused, cmds)
		}
		if left := unheldLeft(t, side.a); len(left) > 0 {
			t.Errorf("%s: left after the operation: %x", name, left)
		}
	})
	A.bus.Set(nil)
	B.bus.Set(nil)
	for _, a := range []*Agent{A.a, B.a} {
		if _, err := a.AuditVerify(t.Context()); err != nil {
			t.Errorf("audit verify: %v", err)
		}
	}
	if reused == 0 {
		t.Fatal("no gate proof went into a session used before: not mounted")
	}
}

// Attack 2: provision (a new trail: its anchor's first record, then
// provision's, in the same policy session: PrepareGatedExtendAgain) with
// D created under the new PK (an officer and a PCR policy), so that D's
// creation leaves a spare; then provision --force on that state (its
// zeroize-start record, zeroize's flush of every session it lists, its
// last record, then a new trail). One-shot and in the daemon. What must
// hold: every proof into a session used before is into a clean one; no
// honest proof or extend refused; nothing left; provision's record once
// per provision; the trail verifies.
func TestReview10ProvisionRecordsAfterDsCreation(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(map[bool]string{false: "one-shot", true: "daemon"}[daemon], func(t *testing.T) {
			t.Parallel()
			b := &swtpmtest.Bus{}
			l := &swtpmtest.SessionLimit{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b), swtpmtest.WithWrap(l.Wrap))
			a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: daemon})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			r := newReview10Tracker()
			b.Set(r.hook)
			reused := 0
			for i, force := range []bool{false, true} {
				ctx := api.WithCaller(t.Context(), api.Caller{UID: 4200 + i})
				if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: force}); err != nil {
					t.Fatalf("provision (force %v): %v", force, err)
				}
				reused += review10Check(t, fmt.Sprintf("provision (force %v)", force), r)
				if refused, cmds := l.Take(); refused > 0 {
					t.Errorf("provision (force %v): %d refusals for want of a slot: %v", force, refused, cmds)
				}
				if left := unheldLeft(t, a); len(left) > 0 {
					t.Errorf("provision (force %v): left: %x", force, left)
				}
				if n := review10Ops(t, a, 4200+i, "provision"); n != 1 {
					t.Errorf("provision (force %v): its provision records in the trail: %d", force, n)
				}
				if _, err := a.AuditVerify(t.Context()); err != nil {
					t.Errorf("provision (force %v): audit verify: %v", force, err)
				}
			}
			b.Set(nil)
			if _, err := a.Seal(t.Context(), api.SealRequest{Data: []byte("x"), PCRs: []int{7}}); err != nil {
				t.Errorf("seal after: %v", err)
			}
			if reused == 0 {
				t.Error("no proof went into D's creation's session: not mounted")
			}
		})
	}
}

// review10SignedDaemon is a daemon's agent (KeepSession) on env,
// provisioned with an officer and a policy signer, its first signed policy
// (PCR 7 as it is) installed (D created), key "k" created; and a maker of
// the signed policy of each version.
func review10SignedDaemon(t *testing.T, env *swtpmtest.Env) (*Agent, func(version uint64) []byte, uint64) {
	t.Helper()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := t.Context()
	res, signed := provisionSigned(t, a)
	if r, err := a.InstallPolicy(ctx, signed(*res.Counter)); err != nil || !r.Satisfied {
		t.Fatalf("install: %+v %v", r, err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	return a, signed, *res.Counter
}

// Attack 3: the daemon (KeepSession) under concurrent requests: seals,
// key creations, signs (which keep the operation's policy session between
// requests), status and policy installs that move the gated policy
// counter, behind the resource manager's three sessions per connection
// (SessionLimit), and again with the TPM opened as a resource manager's
// channel. Run with -race: the spare lives in the TPM's Share, which the
// agent's lock serializes. What must hold: every request succeeds, no
// refusal for want of a slot, no proof into a session holding another
// policy, no honest proof, extend or increment refused, each request's
// record in the trail once (by its caller's uid), the counter at the last
// version installed, nothing left, the trail verifies.
func TestReview10DaemonConcurrentRequests(t *testing.T) {
	t.Parallel()
	for _, rm := range []bool{false, true} {
		t.Run(map[bool]string{false: "exclusive", true: "resource manager"}[rm], func(t *testing.T) {
			t.Parallel()
			b := &swtpmtest.Bus{}
			l := &swtpmtest.SessionLimit{}
			opts := []swtpmtest.Option{swtpmtest.WithBus(b), swtpmtest.WithWrap(l.Wrap)}
			if rm {
				opts = append(opts, swtpmtest.WithResourceManager())
			}
			env := swtpmtest.Start(t, opts...)
			a, signed, first := review10SignedDaemon(t, env)
			l.Take()
			r := newReview10Tracker()
			b.Set(r.hook)
			const rounds = 4
			type req struct {
				uid, audited int
				fn           func(ctx context.Context) error
			}
			var reqs []req
			for i := range rounds {
				reqs = append(reqs,
					req{5000 + i, 1, func(ctx context.Context) error {
						_, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
						return err
					}},
					req{5100 + i, 1, func(ctx context.Context) error {
						_, err := a.CreateKey(ctx, api.CreateRequest{Name: fmt.Sprintf("c%d", i), Type: "ecc-p256"})
						return err
					}},
					req{5200 + i, 0, func(ctx context.Context) error {
						_, err := a.Sign(ctx, "k", make([]byte, 32), api.SignOptions{})
						return err
					}},
					req{5300 + i, 0, func(ctx context.Context) error { _, err := a.Status(ctx); return err }},
				)
			}
			var wg sync.WaitGroup
			errs := make(chan error, len(reqs)+rounds)
			for _, q := range reqs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := q.fn(api.WithCaller(t.Context(), api.Caller{UID: q.uid})); err != nil {
						errs <- fmt.Errorf("uid %d: %w", q.uid, err)
					}
				}()
			}
			wg.Add(1)
			go func() { // the installs, in version order
				defer wg.Done()
				for i := range uint64(rounds) {
					ctx := api.WithCaller(t.Context(), api.Caller{UID: 5400 + int(i)})
					if res, err := a.InstallPolicy(ctx, signed(first+1+i)); err != nil || !res.Satisfied {
						errs <- fmt.Errorf("install %d: %+v %w", first+1+i, res, err)
					}
				}
			}()
			wg.Wait()
			close(errs)
			b.Set(nil)
			for err := range errs {
				t.Error(err)
			}
			review10Check(t, "concurrent requests", r)
			if refused, cmds := l.Take(); refused > 0 {
				t.Errorf("%d refusals for want of a slot: %v", refused, cmds)
			}
			for _, q := range reqs {
				if n := review9Records(t, a, q.uid); n != q.audited {
					t.Errorf("uid %d: %d records, want %d", q.uid, n, q.audited)
				}
			}
			for i := range rounds {
				if n := review10Ops(t, a, 5400+i, "policy-install"); n != 1 {
					t.Errorf("install %d: %d records", i, n)
				}
			}
			if c, err := a.readCounter(); err != nil || c != first+rounds {
				t.Errorf("policy counter %d (%v), want %d", c, err, first+rounds)
			}
			if _, err := a.AuditVerify(t.Context()); err != nil {
				t.Errorf("audit verify: %v", err)
			}
			if left := unheldLeft(t, a); len(left) > 0 {
				t.Errorf("left: %x", left)
			}
		})
	}
}

// Attack 1 and 4 across operations: in one Share (Agent.Share, the CLI's
// inOneSession: one process, the agent's one user), an operation leaves a
// spare that its record did not take (a seal run without its record, as
// when the record fails before its proof); then, optionally, the leak
// sweep runs (a lock's end after tpm.NeedsSweep: the spare is in no held
// list) and the next operation runs: its record, the policy counter's
// gated increments (policy install), or zeroize (its records, its flush of
// every session it lists). What must hold: no proof into a session holding
// another policy, no honest proof, extend or increment refused (the sweep
// flushed the spare: it is forgotten, not proved in), the spare not
// younger or older than a proof allows, nothing left after the Share, the
// counter at the version installed, the trail verifies (zeroize: archived,
// its result without error).
func TestReview10SpareAcrossOperationsInOneShare(t *testing.T) {
	t.Parallel()
	next := map[string]func(t *testing.T, a *Agent, signed func(uint64) []byte, first uint64) error{
		"record": func(t *testing.T, a *Agent, _ func(uint64) []byte, _ uint64) error {
			return a.RecordRefusal(api.WithCaller(t.Context(), api.Caller{UID: 6000}), "key-delete", "next")
		},
		"key delete": func(t *testing.T, a *Agent, _ func(uint64) []byte, _ uint64) error {
			return a.DeleteKey(t.Context(), "k")
		},
		"policy install": func(t *testing.T, a *Agent, signed func(uint64) []byte, first uint64) error {
			res, err := a.InstallPolicy(t.Context(), signed(first+2))
			if err == nil && !res.Satisfied {
				err = fmt.Errorf("not satisfied: %+v", res)
			}
			if c, cerr := a.readCounter(); err == nil && (cerr != nil || c != first+2) {
				err = fmt.Errorf("counter %d (%v), want %d", c, cerr, first+2)
			}
			return err
		},
		"zeroize": func(t *testing.T, a *Agent, _ func(uint64) []byte, _ uint64) error {
			_, err := a.Zeroize(t.Context(), api.ZeroizeOptions{})
			return err
		},
	}
	for name, op := range next {
		for _, sweep := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sweep %v", name, sweep), func(t *testing.T) {
				t.Parallel()
				b := &swtpmtest.Bus{}
				env := swtpmtest.Start(t, swtpmtest.WithBus(b))
				a, signed, first := review10SignedDaemon(t, env)
				r := newReview10Tracker()
				b.Set(r.hook)
				var spare tpm2.TPMHandle
				err := a.Share(func() error {
					unlock := a.lock()
					_, err := a.seal(t.Context(), api.SealRequest{Data: []byte("x"), PCRs: []int{7}}, map[string]string{})
					for _, h := range unheldLeft(t, a) {
						if h>>24 == 0x03 {
							spare = h
						}
					}
					if sweep {
						a.t.Unheld()
					}
					unlock()
					if err != nil {
						return err
					}
					if spare == 0 {
						t.Fatal("no spare left by the seal: not mounted")
					}
					if _, err := a.TPMInfo(t.Context()); err != nil { // a lock's end: the sweep when asked
						return err
					}
					gone := true
					for _, h := range unheldLeft(t, a) {
						if h == spare {
							gone = false
						}
					}
					t.Logf("spare 0x%08x, flushed by the sweep: %v", uint32(spare), gone)
					if sweep && !gone {
						t.Error("the sweep ran and left the spare")
					}
					return op(t, a, signed, first)
				})
				b.Set(nil)
				if err != nil {
					t.Fatal(err)
				}
				review10Check(t, name, r)
				if left := unheldLeft(t, a); len(left) > 0 {
					t.Errorf("left after the Share: %x", left)
				}
				if name != "zeroize" {
					if _, err := a.AuditVerify(t.Context()); err != nil {
						t.Errorf("audit verify: %v", err)
					}
				}
			})
		}
	}
}

// Attack 5: the spare's paths under faults, with every log line kept
// (debug): a seal whose record's PolicySecret, PolicyCommandCode,
// NV_Extend or the spare's FlushContext (the first after the creation) is
// run and answered an error, or refused before the TPM, one-shot and in
// the daemon. What must hold: neither the log nor the error names the
// objects' authValue (the spare was keyed by it), the audit gate's value
// or the sealed data, in hex or raw.
func TestReview10NoSecretInLogsOrErrors(t *testing.T) {
	t.Parallel()
	secret := []byte("review10 the sealed disk key")
	ccs := []tpm2.TPMCC{tpm2.TPMCCPolicySecret, tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCNVExtend, tpm2.TPMCCFlushContext}
	for _, daemon := range []bool{false, true} {
		for _, cc := range ccs {
			for _, ran := range []bool{true, false} {
				t.Run(fmt.Sprintf("daemon %v/%v/ran %v", daemon, cc, ran), func(t *testing.T) {
					t.Parallel()
					b := &swtpmtest.Bus{}
					env := swtpmtest.Start(t, swtpmtest.WithBus(b))
					var logs bytes.Buffer
					var lmu sync.Mutex
					w := writerFunc(func(p []byte) (int, error) { lmu.Lock(); defer lmu.Unlock(); return logs.Write(p) })
					a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: daemon,
						Logger: slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { a.Close() })
					ctx := t.Context()
					if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
						t.Fatal(err)
					}
					var mu sync.Mutex
					created, fired := false, false
					b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
						mu.Lock()
						defer mu.Unlock()
						c := swtpmtest.CommandCode(cmd)
						if c == tpm2.TPMCCCreate {
							created = true
						}
						if !created || fired || c != cc {
							return nil, nil, false
						}
						fired = true
						if ran {
							if _, err := next.Send(cmd); err != nil {
								return nil, err, true
							}
						}
						return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
					})
					_, serr := a.Seal(ctx, api.SealRequest{Data: secret, PCRs: []int{7}})
					b.Set(nil)
					if !fired {
						t.Fatal("not mounted")
					}
					// The next operation writes what waits, and sweeps.
					_, nerr := a.Seal(ctx, api.SealRequest{Data: secret, PCRs: []int{7}})
					var st pkState
					if err := a.st.View(ctx, func(tx *store.Tx) (err error) { st, err = a.readPK(tx); return err }); err != nil {
						t.Fatal(err)
					}
					g, err := a.trailAnchor().gate()
					if err != nil {
						t.Fatal(err)
					}
					lmu.Lock()
					text := logs.String() + fmt.Sprint(serr) + fmt.Sprint(nerr)
					lmu.Unlock()
					t.Logf("seal: %v; next: %v; %d bytes of log", serr, nerr, len(text))
					for what, h := range map[string]string{"the objects' authValue": st.ObjectAuth, "the gate's value": g.Auth} {
						raw, _ := hex.DecodeString(h)
						if h == "" || len(raw) == 0 {
							t.Fatalf("%s not found in the state", what)
						}
						if strings.Contains(strings.ToLower(text), strings.ToLower(h)) || bytes.Contains([]byte(text), raw) ||
							strings.Contains(text, fmt.Sprint(raw)) || strings.Contains(text, fmt.Sprintf("%X", raw)) {
							t.Errorf("%s in the log or an error", what)
						}
					}
					if strings.Contains(text, string(secret)) || strings.Contains(text, hex.EncodeToString(secret)) {
						t.Error("the sealed data in the log or an error")
					}
				})
			}
		}
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
