package agent

// Attacks on the daemon's record path now that
// tpm.ReadPrepareGatedExtend runs in provd's keyed HMAC session and a
// refused gate proof is told apart by a probe (tpm.authorizeChecked): a
// long-running agent (KeepSession) whose records after the first read
// the anchor and prove the gate in that one session. A1 is the bus.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// recordingDaemon is a daemon's agent (keptAgent: KeepSession, provisioned,
// key "k") behind bus, with one record written so that every later one
// takes the ReadPrepare path.
func recordingDaemon(t *testing.T, opts ...swtpmtest.Option) (*swtpmtest.Env, *swtpmtest.Bus, *Agent) {
	t.Helper()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, append([]swtpmtest.Option{swtpmtest.WithBus(b)}, opts...)...)
	a := keptAgent(t, env)
	if err := a.RecordRefusal(api.WithCaller(context.Background(), api.Caller{UID: 1}), "key-delete", "warm"); err != nil {
		t.Fatal(err)
	}
	return env, b, a
}

// unheldLeft is what the TPM holds that the agent does not hold
// (heldHandles).
func unheldLeft(t *testing.T, a *Agent) []tpm2.TPMHandle {
	t.Helper()
	left, err := a.t.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	held := a.heldHandles()
	var out []tpm2.TPMHandle
	for _, h := range left {
		if !slices.Contains(held, h) {
			out = append(out, h)
		}
	}
	return out
}

// trailLines counts the audit trail's lines that hold marker.
func trailLines(t *testing.T, a *Agent, marker string) int {
	t.Helper()
	b, err := os.ReadFile(a.auditPath())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range bytes.Split(b, []byte("\n")) {
		if bytes.Contains(line, []byte(marker)) {
			n++
		}
	}
	return n
}

// A1 renames the answer of the record's gate load (TPM2_Load under the
// SRK's password, where the persistent gate is gone: its handle has no HMAC; A1 keeps the name, which
// tpm.LoadGate checks) to an object of its own, noDA. The PolicySecret
// then names A1's object and the TPM refuses it; the probe is refused
// too: forged, and the record's second try (an honest load) writes it.
// What must hold besides: provd flushed the handle it was given (A1's),
// so the real gate key, which the TPM loaded, is held by nobody: the
// operation must ask for the sweep (tpm.Unheld), as withAttestKey does for
// the AK, or it stays loaded (a slot of three on a TPM without a resource
// manager: in the daemon for as long as it runs). In the daemon (the
// record session of tpm.ReadPrepareGatedExtend) and in a one-shot
// process's first record (the proof in the shared session).
func TestRecordGateLoadRenamedLeavesNothing(t *testing.T) {
	for _, mode := range []string{"daemon", "one-shot"} {
		t.Run(mode, func(t *testing.T) {
			var b *swtpmtest.Bus
			var a *Agent
			if mode == "daemon" {
				_, b, a = recordingDaemon(t)
			} else {
				b = &swtpmtest.Bus{}
				env := swtpmtest.Start(t, swtpmtest.WithBus(b))
				first := keptAgent(t, env)
				dir := first.dir
				first.Close()
				var err error
				if a, err = New(Config{TPM: env.TPM, StateDir: dir}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
			}
			gateLoadRenamed(t, b, a)
		})
	}
}

func gateLoadRenamed(t *testing.T, b *swtpmtest.Bus, a *Agent) {
	t.Helper()
	ctx := context.Background()
	// The gate is loaded only when its persistent copy is gone (A2
	// evicted it): the record's proof in place fails, and it loads the
	// gate from its blob.
	if err := a.t.Evict(AuditGateHandle); err != nil {
		t.Fatal(err)
	}
	decoy := swtpmtest.Decoy(t, b.Next)
	var mu sync.Mutex
	var realGate tpm2.TPMHandle
	var log []string
	rename := swtpmtest.RenamedLoad(func(cmd []byte) bool { return swtpmtest.LastSession(cmd, 1) == tpm2.TPMRSPW }, decoy, &realGate)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		log = append(log, fmt.Sprintf("%#x", uint32(cc)))
		// The gate's load: under the SRK's password (TPM_RS_PW).
		return rename(next, cmd)
	})
	err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "gate-renamed")
	b.Set(nil)
	t.Logf("record with the gate's load renamed to A1's 0x%08x (the gate 0x%08x): %v; exit %d; commands %v",
		uint32(decoy), uint32(realGate), err, api.ExitCode(err), log)
	if realGate == 0 {
		t.Fatal("not mounted")
	}
	if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
		t.Errorf("the renamed gate reported as a wrong gate value (exit %d)", api.ExitCode(err))
	}
	// A1 flushes its decoy if provd has not.
	_, _ = (tpm2.FlushContext{FlushHandle: decoy}).Execute(b.Next)
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("after the operation (and its sweep, if asked for) the TPM holds %x that provd does not (the real gate 0x%08x)", left, uint32(realGate))
		for _, h := range left {
			_ = a.t.Flush(h)
		}
	}
	if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "after"); err != nil {
		t.Fatalf("the next record: %v", err)
	}
	if n := trailLines(t, a, "gate-renamed"); n != 1 {
		t.Errorf("the record is in the trail %d times", n)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// A1 drops every gate proof's TPM2_PolicySecret of a daemon's record and
// answers TPM_RC_BAD_AUTH in the TPM's place; or changes one byte of it
// (its expiration) and passes it on, and the TPM refuses its HMAC. Either
// way the record session's nonces do not move and the probe verifies:
// the record waits (pending) with exit 11, "a TPM authorization value was
// wrong", although audit.gate is intact (an error answer has no HMAC, and
// the TPM cannot tell a changed command from a wrong value). What must
// hold: nothing in the trail or the anchor that is not provd's, nothing
// left, the record written once by the next operation, the trail
// verifying.
func TestRecordBadAuthInTheTPMsPlace(t *testing.T) {
	for _, mode := range []string{"dropped, BAD_AUTH forged", "changed, the TPM refuses"} {
		t.Run(mode, func(t *testing.T) {
			_, b, a := recordingDaemon(t)
			ctx := context.Background()
			var mu sync.Mutex
			n, probes := 0, 0
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic && tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
					probes++
				}
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret {
					return nil, nil, false
				}
				n++
				if mode == "dropped, BAD_AUTH forged" {
					return swtpmtest.ErrorAnswer(tpm2.TPMRCBadAuth + tpm2.TPMRC(0x900)), nil, true
				}
				c := slices.Clone(cmd)
				c[len(c)-1] ^= 1
				rsp, err := next.Send(c)
				return rsp, err, true
			})
			err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "bad-auth-forged")
			b.Set(nil)
			t.Logf("every PolicySecret %s (%d, %d probes): %v; exit %d (ExitBadAuth %d)", mode, n, probes, err, api.ExitCode(err), api.ExitBadAuth)
			if n == 0 {
				t.Fatal("not mounted")
			}
			if err == nil {
				t.Fatal("recorded without a gate proof")
			}
			if left := unheldLeft(t, a); len(left) > 0 {
				t.Errorf("left: %x", left)
			}
			if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "after"); err != nil {
				t.Fatalf("the next record: %v", err)
			}
			if n := trailLines(t, a, "bad-auth-forged"); n != 1 {
				t.Errorf("the pending record is in the trail %d times", n)
			}
			if _, err := a.AuditVerify(ctx); err != nil {
				t.Errorf("audit verify: %v", err)
			}
		})
	}
}

// An honest reset, power cut or migration in a daemon's record right before each
// command after the record's NV_Read of the anchor: the policy session's
// start, the PolicySecret, the PolicyCommandCode, the extend. The record
// reads in a session of its own (an audited refusal: no operation before
// it) or in the operation's shared session (a warm seal, 0618040: the
// second review's TestReview2WarmSealRecordEventsAfterTheSharedRead). A
// warm seal's record starts no policy session: it proves the gate in the
// creation's (tpm.PolicySession.Spare, issue 14), so its first point is
// the anchor's read itself, while that session is kept.
// Never exit 15 (forged) nor 11 (wrong value); the refusal's record is in
// the trail once (now, or pending and written by the next operation); the
// trail verifies; nothing is left that provd does not hold; the next
// operation works.
func TestDaemonRecordEventsBetweenReadAndProof(t *testing.T) {
	t.Parallel()
	points := []struct {
		name string
		at   func(cmd []byte) bool
	}{
		{"anchor read", func(cmd []byte) bool {
			return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead && len(cmd) >= 14 && binary.BigEndian.Uint32(cmd[10:14]) == uint32(AuditAnchorHandle)
		}},
		{"policy start", func(cmd []byte) bool {
			st, ok := swtpmtest.SessionType(cmd)
			return swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && ok && st == tpm2.TPMSEPolicy
		}},
		{"PolicySecret", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret }},
		{"PolicyCommandCode", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicyCommandCode }},
		{"extend", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend }},
	}
	seal := func(a *Agent, data string) error {
		_, err := a.Seal(context.Background(), api.SealRequest{Data: []byte(data), PCRs: []int{7}})
		return err
	}
	ops := []struct {
		name   string
		warm   func(a *Agent) error                // before the event, and after it
		run    func(a *Agent, marker string) error // the operation whose record meets it
		marked bool                                // its record carries marker
		skip   string                              // the point its record does not reach
	}{
		{"a refusal's record", func(a *Agent) error { _, err := signK(a); return err }, func(a *Agent, marker string) error {
			return a.RecordRefusal(api.WithCaller(context.Background(), api.Caller{UID: 4242}), "key-delete", marker)
		}, true, "anchor read"},
		{"a warm seal's record", func(a *Agent) error { return seal(a, "warm") }, func(a *Agent, _ string) error {
			return seal(a, "the disk key")
		}, false, "policy start"},
	}
	for _, op := range ops {
		for _, ev := range swtpmtest.Events {
			for _, p := range points {
				if p.name == op.skip {
					continue
				}
				t.Run(op.name+"/"+ev+"/before "+p.name, func(t *testing.T) {
					env, b, a := recordingDaemon(t)
					ctx := context.Background()
					if err := op.warm(a); err != nil {
						t.Fatal(err)
					}
					var mu sync.Mutex
					read, fired := false, false
					b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
						mu.Lock()
						defer mu.Unlock()
						if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead && len(cmd) >= 14 &&
							binary.BigEndian.Uint32(cmd[10:14]) == uint32(AuditAnchorHandle) &&
							tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
							read = true
						}
						if !read || fired || !p.at(cmd) {
							return nil, nil, false
						}
						fired = true
						env.Event(ev)
						return nil, nil, false
					})
					marker := "event-" + ev
					err := op.run(a, marker)
					b.Set(nil)
					t.Logf("%s with a %s before the %s: %v; exit %d", op.name, ev, p.name, err, api.ExitCode(err))
					if !fired {
						t.Fatal("not mounted")
					}
					if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == api.ExitIdentity {
						t.Errorf("an honest %s called forged (exit %d)", ev, api.ExitCode(err))
					}
					if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
						t.Errorf("an honest %s called a wrong value (exit %d)", ev, api.ExitCode(err))
					}
					if left := unheldLeft(t, a); len(left) > 0 {
						t.Errorf("left after the operation: %x", left)
					}
					if err := op.warm(a); err != nil {
						t.Errorf("the next operation: %v", err)
					}
					if op.marked {
						if n := trailLines(t, a, marker); n != 1 {
							t.Errorf("the record is in the trail %d times", n)
						}
					}
					if _, err := a.AuditVerify(ctx); err != nil {
						t.Errorf("audit verify: %v", err)
					}
				})
			}
		}
	}
}

// A1 replays, to every record-session NV_Read of a daemon's record, the
// answer it kept from the previous record's (the anchor's value before
// that record's extend), passing the command on. Each answer's HMAC
// covers the nonces of this session: forged (exit 15), never taken as
// the anchor's value, nothing extended; the next record on an honest bus
// writes the pending one and the trail verifies.
func TestDaemonReplayedAnchorRead(t *testing.T) {
	env, b, a := recordingDaemon(t)
	ctx := context.Background()
	isRead := func(cmd []byte) bool {
		return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead && tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions
	}
	var mu sync.Mutex
	var kept []byte
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !isRead(cmd) {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		mu.Lock()
		kept = slices.Clone(rsp)
		mu.Unlock()
		return rsp, err, true
	})
	if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 2}), "key-delete", "kept"); err != nil {
		t.Fatal(err)
	}
	if kept == nil {
		t.Fatal("no session read to keep")
	}
	was, err := env.TPM.Anchor(AuditAnchorHandle).Read()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !isRead(cmd) {
			return nil, nil, false
		}
		n++
		if _, err := next.Send(cmd); err != nil {
			return nil, err, true
		}
		return slices.Clone(kept), nil, true
	})
	err = a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "replayed-read")
	b.Set(nil)
	t.Logf("every session read answered with the last record's answer (%d): %v; exit %d", n, err, api.ExitCode(err))
	if n == 0 {
		t.Fatal("not mounted")
	}
	if err == nil {
		t.Fatal("recorded on a replayed anchor read")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("a replayed anchor read: exit %d, want forged (%d)", api.ExitCode(err), api.ExitIdentity)
	}
	now, rerr := env.TPM.Anchor(AuditAnchorHandle).Read()
	if rerr != nil {
		t.Fatal(rerr)
	}
	if !bytes.Equal(now, was) {
		t.Errorf("the anchor moved on a replayed read")
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("left: %x", left)
	}
	if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "after"); err != nil {
		t.Fatalf("the next record: %v", err)
	}
	if n := trailLines(t, a, "replayed-read"); n != 1 {
		t.Errorf("the pending record is in the trail %d times", n)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// The daemon behind the resource manager's limit (three sessions per
// connection), after a warm sign (its key use's policy session kept): A1
// forges TPM_RC_RETRY after the TPM ran a seal's record's PolicySecret
// (the record session's nonces move, the resend and the probe are
// refused), once and then every time. The probe takes no session of its
// own: no refusal for want of a slot; never exit 11; nothing left; the
// next sign works.
func TestDaemonProbeBehindTheSessionLimit(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	_, b, a := recordingDaemon(t, swtpmtest.WithWrap(l.Wrap))
	ctx := context.Background()
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	for _, every := range []bool{false, true} {
		l.Take()
		var mu sync.Mutex
		ran, armed := 0, false
		b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			mu.Lock()
			defer mu.Unlock()
			if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret {
				return nil, nil, false
			}
			if armed || (!every && ran > 0) {
				armed = false
				return nil, nil, false
			}
			ran++
			armed = true
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
			return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
		})
		_, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
		b.Set(nil)
		refused, cmds := l.Take()
		t.Logf("every=%v: seal whose record's PolicySecret was answered RETRY (%d): %v; exit %d; %d refusals", every, ran, err, api.ExitCode(err), refused)
		if ran == 0 {
			t.Fatal("not mounted")
		}
		if refused > 0 {
			t.Errorf("every=%v: %d refusals for want of a session slot in %v", every, refused, cmds)
		}
		if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
			t.Errorf("every=%v: A1's RETRY reported as a wrong value (exit %d)", every, api.ExitCode(err))
		}
		if !every && err != nil {
			t.Errorf("the record's second try: %v", err)
		}
		if left := unheldLeft(t, a); len(left) > 0 {
			t.Errorf("left: %x", left)
		}
		if _, err := signK(a); err != nil {
			t.Errorf("the next sign: %v", err)
		}
	}
	// The pending record of the seal whose record failed goes in first.
	if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "after"); err != nil {
		t.Fatalf("the next record: %v", err)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// unwrittenAnchorLie is A1 making a written anchor look never extended:
// every NV_Read of the anchor that carries a session answered
// TPM_RC_NV_UNINITIALIZED (an error answer has no HMAC), and every
// NV_ReadPublic of it answered with its public area as the TPM reports
// it, the written bit cleared, and the name of that (consistent, as
// AuthenticatedNV.ReadPublic checks). NV_ReadPublic is not authenticated;
// agent.trailAnchor.Read takes the unwritten name as audit.ErrAnchorEmpty
// without a read that would authenticate it.
func unwrittenAnchorLie(hits *int) swtpmtest.Hook {
	var mu sync.Mutex
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		if len(cmd) < 14 || tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != AuditAnchorHandle {
			return nil, nil, false
		}
		switch {
		case cc == tpm2.TPMCCNVRead && tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions:
			*hits++
			return swtpmtest.ErrorAnswer(tpm2.TPMRCNVUninitialized), nil, true
		case cc == tpm2.TPMCCNVReadPublic:
			rp, err := (tpm2.NVReadPublic{NVIndex: AuditAnchorHandle}).Execute(next)
			if err != nil {
				return nil, err, true
			}
			pub, err := rp.NVPublic.Contents()
			if err != nil {
				return nil, err, true
			}
			pub.Attributes.Written = false
			name, err := tpm2.NVName(pub)
			if err != nil {
				return nil, err, true
			}
			*hits++
			body := append(tpm2.Marshal(tpm2.New2B(*pub)), tpm2.Marshal(*name)...)
			rsp := make([]byte, 10, 10+len(body))
			binary.BigEndian.PutUint16(rsp[0:2], uint16(tpm2.TPMSTNoSessions))
			rsp = append(rsp, body...)
			binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
			return rsp, nil, true
		}
		return nil, nil, false
	}
}

// A1 makes a genuine trail look tampered (docs/threat-model.md, "What
// verify compares the trail with is the TPM's anchor": claimed stopped):
// unwrittenAnchorLie during `audit verify`, and during a daemon's record
// (its record session's read refused, so ReadPrepare reads apart, and the
// read apart takes the anchor as never extended). Neither may say
// tampered (exit 14): the anchor's value is the TPM's only through an
// authenticated read, and nothing here was authenticated. After it, on an
// honest bus, the trail verifies and the record is in it once.
func TestGenuineTrailMadeToLookTampered(t *testing.T) {
	for _, op := range []string{"audit verify", "daemon record"} {
		t.Run(op, func(t *testing.T) {
			_, b, a := recordingDaemon(t)
			ctx := context.Background()
			hits := 0
			b.Set(unwrittenAnchorLie(&hits))
			var err error
			if op == "audit verify" {
				_, err = a.AuditVerify(ctx)
			} else {
				err = a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "anchor-lie")
			}
			b.Set(nil)
			t.Logf("%s through A1 (%d answers forged): %v; exit %d", op, hits, err, api.ExitCode(err))
			if hits == 0 {
				t.Fatal("not mounted")
			}
			if errors.Is(err, api.ErrTampered) || api.ExitCode(err) == api.ExitCode(api.ErrTampered) {
				t.Errorf("%s: a genuine trail reported tampered (exit %d) on two unauthenticated answers", op, api.ExitCode(err))
			}
			if op == "daemon record" {
				if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "after"); err != nil {
					t.Fatalf("the next record: %v", err)
				}
				if n := trailLines(t, a, "anchor-lie"); n != 1 {
					t.Errorf("the record is in the trail %d times", n)
				}
			}
			if _, err := a.AuditVerify(ctx); err != nil {
				t.Errorf("audit verify on an honest bus: %v", err)
			}
		})
	}
}

// A2 recreated the audit anchor as another index (its name neither the
// trail's written anchor nor its unwritten form), and A1 answers every
// NV_ReadPublic of it that carries no session with the trail's anchor,
// written bit cleared: the unwritten form. provd's read, named for the
// written anchor, is refused by the TPM; the TPM says in the session that
// the index is not the written anchor, and not the unwritten one either
// (TPM2_NV_ReadPublic naming it: refused), so the bus's "unwritten" is
// forged (exit 15), where it would have been taken as an empty anchor.
func TestAnchorCalledUnwrittenMustBeSoInTheSession(t *testing.T) {
	env, b, a := recordingDaemon(t)
	ctx := context.Background()
	orig, err := env.TPM.ReadNVPublic(AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	// A2: another index at the anchor's handle.
	if err := env.TPM.UndefineNV(AuditAnchorHandle); err != nil {
		t.Fatal(err)
	}
	other := orig.Public
	other.Attributes.Written = false
	other.Attributes.NoDA = !other.Attributes.NoDA
	if _, err := env.TPM.DefineNV(other); err != nil {
		t.Fatal(err)
	}
	lie := orig.Public
	lie.Attributes.Written = false
	name, err := tpm2.NVName(&lie)
	if err != nil {
		t.Fatal(err)
	}
	body := append(tpm2.Marshal(tpm2.New2B(lie)), tpm2.Marshal(*name)...)
	hits := 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVReadPublic || tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions ||
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != AuditAnchorHandle {
			return nil, nil, false
		}
		hits++
		rsp := make([]byte, 10, 10+len(body))
		binary.BigEndian.PutUint16(rsp[0:2], uint16(tpm2.TPMSTNoSessions))
		rsp = append(rsp, body...)
		binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
		return rsp, nil, true
	})
	_, err = a.AuditVerify(ctx)
	b.Set(nil)
	t.Logf("audit verify, the anchor recreated and called unwritten on the bus (%d answers forged): %v; exit %d", hits, err, api.ExitCode(err))
	if hits == 0 {
		t.Fatal("not mounted")
	}
	if !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("the bus's unwritten anchor: %v, want forged", err)
	}
	// On an honest bus the recreated anchor is tampering.
	if _, err := a.AuditVerify(ctx); !errors.Is(err, api.ErrTampered) {
		t.Errorf("audit verify on an honest bus: %v, want tampered", err)
	}
}
