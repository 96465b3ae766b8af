package agent

// Review 9: the spare policy session (9627171, tpm.PolicySession.Spare)
// under honest TPM events and A1, through the agent: the record of a
// creation under the PK proves the audit gate in the creation's policy
// session, kept in the operation's Share between the TPM2_Create and the
// record.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review9Records counts uid's records in a's trail and in its
// audit.pending.
func review9Records(t *testing.T, a *Agent, uid int) int {
	t.Helper()
	recs, err := audit.ReadRecords(a.auditPath())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.UID == uid {
			n++
		}
	}
	p, _ := os.ReadFile(a.pendingPath())
	for _, l := range strings.Split(string(p), "\n") {
		if strings.Contains(l, fmt.Sprintf(`"uid":%d,`, uid)) || strings.HasSuffix(strings.TrimSpace(l), fmt.Sprintf(`"uid":%d}`, uid)) {
			n++
		}
	}
	return n
}

// review9Ops are the operations whose record takes the spare: a seal and
// a key creation (TPM2_Create under the PK in a policy session of
// StartSecretPolicySession).
var review9Ops = []struct {
	name string
	run  func(a *Agent, uid int, n int) error
}{
	{"seal", func(a *Agent, uid, _ int) error {
		_, err := a.Seal(api.WithCaller(context.Background(), api.Caller{UID: uid}), api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
		return err
	}},
	{"key create", func(a *Agent, uid, n int) error {
		_, err := a.CreateKey(api.WithCaller(context.Background(), api.Caller{UID: uid}), api.CreateRequest{Name: fmt.Sprintf("made%d", n), Type: "ecc-p256"})
		return err
	}},
}

// review9Agent is a daemon's agent (KeepSession, its trail open by a
// record) or a one-shot process's on a provisioned state, behind b.
func review9Agent(t *testing.T, daemon bool, opts ...swtpmtest.Option) (*swtpmtest.Env, *swtpmtest.Bus, *Agent) {
	t.Helper()
	if daemon {
		return recordingDaemon(t, opts...)
	}
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, append([]swtpmtest.Option{swtpmtest.WithBus(b)}, opts...)...)
	next := oneShotState(t, env)
	a := next()
	t.Cleanup(func() { a.Close() })
	return env, b, a
}

// A reset, a power cut or a migration at each point the spare lives
// through: right after the creation's answer (the spare kept, nothing of
// the record sent), right after the PolicySecret in it and after the
// PolicyCommandCode (the proof in the spare), right after the extend (the
// extend made, the spare not yet flushed), and before the spare's
// flush. One-shot and in the daemon, for a seal and a key creation. What
// must hold: never forged (exit 15) or a wrong value (exit 11); the
// operation's record in the trail or pending exactly once; nothing left
// that provd does not hold; the next operation works and the trail then
// verifies.
func TestReview9EventsAroundTheSpare(t *testing.T) {
	t.Parallel()
	type point struct {
		name  string
		at    func(cmd []byte, spare tpm2.TPMHandle) bool
		after bool // the event after the TPM's answer, not before the command
	}
	isCC := func(cc tpm2.TPMCC) func([]byte, tpm2.TPMHandle) bool {
		return func(cmd []byte, _ tpm2.TPMHandle) bool { return swtpmtest.CommandCode(cmd) == cc }
	}
	points := []point{
		{"after the creation", isCC(tpm2.TPMCCCreate), true},
		{"after the PolicySecret", isCC(tpm2.TPMCCPolicySecret), true},
		{"after the PolicyCommandCode", isCC(tpm2.TPMCCPolicyCommandCode), true},
		{"after the extend", isCC(tpm2.TPMCCNVExtend), true},
		{"before the spare's flush", func(cmd []byte, spare tpm2.TPMHandle) bool {
			return swtpmtest.CommandCode(cmd) == tpm2.TPMCCFlushContext && len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == spare
		}, false},
	}
	for _, daemon := range []bool{true, false} {
		mode := map[bool]string{true: "daemon", false: "one-shot"}[daemon]
		for _, op := range review9Ops {
			for _, ev := range swtpmtest.Events {
				for _, p := range points {
					t.Run(mode+"/"+op.name+"/"+ev+"/"+p.name, func(t *testing.T) {
						t.Parallel()
						env, b, a := review9Agent(t, daemon)
						var mu sync.Mutex
						var spare tpm2.TPMHandle
						fired := false
						b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
							mu.Lock()
							defer mu.Unlock()
							cc := swtpmtest.CommandCode(cmd)
							if cc == tpm2.TPMCCCreate && spare == 0 {
								if s := swtpmtest.Sessions(cmd, 1); len(s) > 0 {
									spare = s[0]
								}
							}
							if spare == 0 || fired || !p.at(cmd, spare) {
								return nil, nil, false
							}
							fired = true
							if !p.after {
								env.Event(ev)
								return nil, nil, false
							}
							rsp, err := next.Send(cmd)
							env.Event(ev)
							return rsp, err, true
						})
						err := op.run(a, 4242, 1)
						b.Set(nil)
						t.Logf("%s with a %s %s: exit %d, %v", op.name, ev, p.name, api.ExitCode(err), err)
						if !fired {
							t.Fatal("not mounted")
						}
						if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == api.ExitIdentity {
							t.Errorf("an honest %s called forged (exit %d)", ev, api.ExitCode(err))
						}
						if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
							t.Errorf("an honest %s called a wrong value (exit %d)", ev, api.ExitCode(err))
						}
						review9After(t, a, op.name, op.run)
					})
				}
			}
		}
	}
}

// review9Swap is A1 on the bus of every operation: once a TPM2_Create or
// TPM2_Duplicate authorized by a policy session is answered success, A1
// flushes that session itself (its own FlushContext, which provd does not
// see) and starts a policy session of its own, unsalted, which the TPM
// gives the freed number. Then, whenever provd sends a PolicySecret into
// that number, A1 passes it on and, if the TPM took it, completes the
// gate's policy in its session and extends the anchor with data of its
// own (provd's extend, bound by cpHashA, is the only one a proof there
// could make; A1 making any extend is what is counted).
type review9Swap struct {
	mu       sync.Mutex
	swapped  int
	tried    int // provd's PolicySecrets into the swapped number
	proofsIn int // PolicySecrets the TPM took into A1's session
	extended int // A1's extends the TPM made
}

func (s *review9Swap) hook(t *testing.T) swtpmtest.Hook {
	var mine tpm2.TPMHandle
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		switch {
		case (cc == tpm2.TPMCCCreate || cc == tpm2.TPMCCDuplicate) && mine == 0:
			nh := map[tpm2.TPMCC]int{tpm2.TPMCCCreate: 1, tpm2.TPMCCDuplicate: 2}[cc]
			ss := swtpmtest.Sessions(cmd, nh)
			if len(ss) == 0 || ss[0]>>24 != 0x03 {
				return nil, nil, false
			}
			rsp, err := next.Send(cmd)
			if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return rsp, err, true
			}
			if _, ferr := (tpm2.FlushContext{FlushHandle: ss[0]}).Execute(next); ferr != nil {
				return rsp, err, true
			}
			own, serr := swtpmtest.StartOwnPolicySession(next)
			if serr == nil {
				mine = own.SessionHandle
				if mine == ss[0] {
					s.swapped++
				}
			}
			return rsp, err, true
		case cc == tpm2.TPMCCPolicySecret && mine != 0 && len(cmd) >= 18 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) == mine:
			s.tried++
			rsp, err := next.Send(cmd)
			if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return rsp, err, true
			}
			s.proofsIn++
			_, _ = (tpm2.PolicyCommandCode{PolicySession: mine, Code: tpm2.TPMCCNVExtend}).Execute(next)
			if rc, xerr := swtpmtest.OwnSessionExtend(next, AuditAnchorHandle, mine, make([]byte, 32)); xerr == nil && rc == tpm2.TPMRCSuccess {
				s.extended++
			}
			return rsp, err, true
		case cc == tpm2.TPMCCFlushContext && mine != 0 && len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == mine:
			// provd flushing the number: A1's session goes.
			mine = 0
		}
		return nil, nil, false
	}
}

// A1 swaps the spare for a session of its own at its number
// (review9Swap) in every operation. The threat model says the spare's
// number is provd's because the creation's answer validated; after A1's
// own flush it no longer is. What must hold: the gate's proof never goes
// into A1's session (PolicySecret names the spare's nonceTPM) and A1
// extends nothing; after each operation nothing is left that provd does
// not hold, once A1's own session is gone; every operation's record is in
// the trail or pending; the next operation on an honest bus works, and
// the trail verifies.
func TestReview9SpareSwappedForA1sSessionInEveryOperation(t *testing.T) {
	t.Parallel()
	A, B := limitedPair(t)
	swapped, tried := 0, 0
	everyOperation(t, A.a, B.a, B.env, func(onB bool, name string, fn func() error) {
		t.Helper()
		if onB {
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return
		}
		s := &review9Swap{}
		A.bus.Set(s.hook(t))
		err := fn()
		A.bus.Set(nil)
		t.Logf("%s: swapped %d, provd's proofs sent there %d, proofs in A1's session %d, A1's extends %d: exit %d %v", name, s.swapped, s.tried, s.proofsIn, s.extended, api.ExitCode(err), err)
		swapped, tried = swapped+s.swapped, tried+s.tried
		if s.proofsIn > 0 || s.extended > 0 {
			t.Errorf("%s: the gate's proof went into A1's session %d times, A1 extended the anchor %d times", name, s.proofsIn, s.extended)
		}
		if refused, cmds := A.l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot: %v", name, refused, cmds)
		}
		left := unheldLeft(t, A.a)
		for _, h := range left {
			if h>>24 == 0x03 {
				_ = A.env.TPM.Flush(h) // A1's own session, if provd did not flush its number
			}
		}
		if left := unheldLeft(t, A.a); len(left) > 0 {
			t.Errorf("%s: left after the operation: %x", name, left)
		}
		if _, err := A.a.AuditVerify(context.Background()); err != nil {
			// Records waiting in audit.pending: the next record writes them.
			if rerr := A.a.RecordRefusal(api.WithCaller(context.Background(), api.Caller{UID: 5}), "key-delete", "honest"); rerr != nil {
				t.Errorf("%s: the next record: %v", name, rerr)
			}
			if _, err := A.a.AuditVerify(context.Background()); err != nil {
				t.Errorf("%s: audit verify: %v", name, err)
			}
		}
	})
	if swapped == 0 || tried == 0 {
		t.Fatalf("%d spares swapped, %d proofs sent into them: not mounted", swapped, tried)
	}
}

// A1 moves provd's generation of the TPM while the spare is kept (the
// first command after the creation's answer is answered
// TPM_RC_INITIALIZE, provd's TPM2_Startup success, neither passed on: the
// TPM never reset), then answers the probe that would show the spare is
// still provd's (dropSpare's TPM2_Hash it guards) with an error, or lets
// it through. Behind SessionLimit, in the daemon (its record reads the
// anchor after the creation, in the shared session, so the spare is kept
// when the generation moves). What must hold: no refusal for want of a
// slot within the operation, the operation's record in the trail or
// pending once, nothing left once provd's sweep ran, and the next
// operation works with the trail verifying.
func TestReview9ForgedStartupWithTheSpareKept(t *testing.T) {
	for _, op := range review9Ops {
		for _, probe := range []string{"probe passed", "probe forged"} {
			t.Run(op.name+"/"+probe, func(t *testing.T) {
				t.Parallel()
				l := &swtpmtest.SessionLimit{}
				env, b, a := recordingDaemon(t, swtpmtest.WithWrap(l.Wrap))
				l.Take()
				var mu sync.Mutex
				stage, probes := 0, 0
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					cc := swtpmtest.CommandCode(cmd)
					switch {
					case stage == 0 && cc == tpm2.TPMCCCreate:
						stage = 1
					case stage == 1:
						stage = 2
						return swtpmtest.ErrorAnswer(tpm2.TPMRCInitialize), nil, true
					case stage == 2 && cc == tpm2.TPMCCStartup:
						stage = 3
						return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
					case stage == 3 && cc == tpm2.TPMCCHash:
						probes++
						if probe == "probe forged" {
							return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
						}
					}
					return nil, nil, false
				})
				err := op.run(a, 4242, 1)
				b.Set(nil)
				refused, cmds := l.Take()
				t.Logf("%s, generation moved by A1 (stage %d), %d probes: exit %d %v", op.name, stage, probes, api.ExitCode(err), err)
				if stage < 3 {
					t.Fatal("not mounted")
				}
				if refused > 0 {
					t.Errorf("%d refusals for want of a slot: %v", refused, cmds)
				}
				review9After(t, a, op.name, op.run)
				_ = env
			})
		}
	}
}

// review9After checks, after an operation of uid 4242 named name: nothing
// left that a does not hold, the next such operation (run) works, the
// record is in the trail or pending once, the trail verifies, and nothing
// is left after the next one either.
func review9After(t *testing.T, a *Agent, name string, run func(a *Agent, uid, n int) error) {
	t.Helper()
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("left after the operation: %x", left)
	}
	if err := run(a, 5, 2); err != nil {
		t.Errorf("the next %s: %v", name, err)
	}
	if n := review9Records(t, a, 4242); n != 1 {
		t.Errorf("the operation's record is in the trail or pending %d times", n)
	}
	if _, err := a.AuditVerify(context.Background()); err != nil {
		t.Errorf("audit verify: %v", err)
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("left after the next operation: %x", left)
	}
}
