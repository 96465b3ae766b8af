package agent_test

// The seventh review: reliability and resources of the persistent audit
// gate (agent.AuditGateHandle, 0x81007601; a9ad628): crash and power-cut
// windows of newGatedAnchor's persistGate, of withGate's re-persist and of
// zeroize's eviction; persistent handles over many trails; a TPM whose
// persistent slots are full; the interplay with gateKeep, zeroize's held
// gate, the daemon's ReadPrepare, reanchor, a state from before the
// change and two state directories on one TPM; command counts.
//
// Three tests fail on a9ad628, each a flaw: TestReview7PersistenceLost-
// ForGoodAfterAnHonestFault, TestReview7GateGoneAndSlotsFullCostsEvery-
// Record and TestReview7ZeroizeCostsMoreThanBefore; the others hold.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
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

// ---------------------------------------------------------------------
// Helpers.

func review7Req(force bool) api.ProvisionRequest {
	return api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: force}
}

// review7Persistent lists the TPM's persistent handles.
func review7Persistent(t *testing.T, tp *tpm.TPM) []tpm2.TPMHandle {
	t.Helper()
	hs, err := tp.Handles(tpm.PersistentHandles)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// review7GateOK checks that the state's audit.gate names the persistent
// gate and that 0x81007601 holds it.
func review7GateOK(t *testing.T, tp *tpm.TPM, dir, when string) {
	t.Helper()
	g := editGate(t, dir, nil)
	if h, _ := g["gate_handle"].(float64); uint32(h) != uint32(agent.AuditGateHandle) {
		t.Errorf("%s: audit.gate names gate_handle %v", when, g["gate_handle"])
	}
	if got := persistentGateName(t, tp); got != g["gate_name"] {
		t.Errorf("%s: 0x%08x holds %q, the trail's gate is %v", when, uint32(agent.AuditGateHandle), got, g["gate_name"])
	}
}

// review7Baseline is the number of persistent objects a provisioned then
// zeroized TPM holds: the fresh TPM's (its EKs) and the SRK, which
// provision makes persistent when it is not and zeroize (without --srk)
// leaves.
func review7Baseline(t *testing.T, tp *tpm.TPM) int {
	t.Helper()
	hs := review7Persistent(t, tp)
	if !slices.Contains(hs, tpm.SRKHandle) {
		return len(hs) + 1
	}
	return len(hs)
}

// review7NoLeftovers fails t when the TPM holds a transient object or a
// session (the agents used are closed).
func review7NoLeftovers(t *testing.T, tp *tpm.TPM, when string) {
	t.Helper()
	if left, err := tp.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("%s: left in the TPM: %x %v", when, left, err)
	}
}

// review7Fill makes persistent objects (copies of one gate key under the
// SRK, at 0x81000100 on) until the TPM refuses one for want of space, and
// returns their handles.
func review7Fill(t *testing.T, tp *tpm.TPM) []tpm2.TPMHandle {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	auth := bytes.Repeat([]byte{0x5a}, 32)
	blob, err := tp.CreateGate(srk, auth)
	if err != nil {
		t.Fatal(err)
	}
	var made []tpm2.TPMHandle
	for i := range 200 {
		g, err := tp.LoadGate(srk, blob, auth)
		if err != nil {
			t.Fatal(err)
		}
		h := tpm2.TPMHandle(0x81000100 + i)
		perr := tp.Persist(g.Object, h)
		if err := tp.Flush(g.Handle); err != nil {
			t.Fatal(err)
		}
		if perr != nil {
			var rc tpm2.TPMRC
			if !errors.As(perr, &rc) || rc != tpm2.TPMRCNVSpace {
				t.Fatalf("filling the persistent slots: %v", perr)
			}
			return made
		}
		made = append(made, h)
	}
	t.Fatal("200 persistent objects and still room")
	return nil
}

// ---------------------------------------------------------------------
// Crash windows: a provd process SIGKILLed right after the TPM answered a
// chosen command (the child is this test binary again, with a transport
// wrap that kills it), then the state used by new processes.

const (
	r7ChildEnv   = "PROVD_REVIEW7_CHILD"
	r7SpecEnv    = "PROVD_REVIEW7_SPEC"
	r7DirEnv     = "PROVD_REVIEW7_DIR"
	r7OpEnv      = "PROVD_REVIEW7_OP"
	r7TriggerEnv = "PROVD_REVIEW7_TRIGGER"
	r7AfterEnv   = "PROVD_REVIEW7_AFTER"
)

// review7Triggers pick the command after whose answer the count starts.
var review7Triggers = map[string]func(cmd []byte) bool{
	// TPM2_NV_DefineSpace of the audit anchor (newGatedAnchor: persistGate
	// follows it: Load, EvictControl, EvictControl, FlushContext).
	"define-anchor": func(cmd []byte) bool {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVDefineSpace {
			return false
		}
		var h [4]byte
		binary.BigEndian.PutUint32(h[:], uint32(agent.AuditAnchorHandle))
		return bytes.Contains(cmd[14:], h[:])
	},
	// TPM2_NV_UndefineSpace of the audit anchor (zeroize's last steps:
	// the gate's eviction follows).
	"undefine-anchor": func(cmd []byte) bool {
		return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVUndefineSpace && len(cmd) >= 18 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) == agent.AuditAnchorHandle
	},
	// TPM2_EvictControl to or of 0x81007601 (the persistentHandle, last
	// parameter): withGate's re-persist, Evict then Persist; zeroize's
	// eviction of the gate, which comes before the anchor's undefine since
	// the sixth review's mends (its read-back, the undefine and its
	// read-back follow).
	"evict-gate": func(cmd []byte) bool {
		return swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 4 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) == agent.AuditGateHandle
	},
}

// review7Killer kills its process once `after` more commands than the
// trigger have been answered (0: right after the trigger's answer).
type review7Killer struct {
	next    transport.TPM
	trigger func([]byte) bool
	after   int
	armed   bool
	count   int
}

func (k *review7Killer) Send(cmd []byte) ([]byte, error) {
	rsp, err := k.next.Send(cmd)
	switch {
	case !k.armed && k.trigger(cmd):
		k.armed = true
	case k.armed:
		k.count++
	default:
		return rsp, err
	}
	if k.count == k.after {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return rsp, err
}

// review7Child is the child process: one operation on the state, killed
// by its transport.
func review7Child() {
	ctx := context.Background()
	after, _ := strconv.Atoi(os.Getenv(r7AfterEnv))
	trig := review7Triggers[os.Getenv(r7TriggerEnv)]
	tp, err := tpm.Open(ctx, tpm.Options{Spec: os.Getenv(r7SpecEnv), Timeout: 30 * time.Second,
		Wrap: func(next transport.TPM) transport.TPM { return &review7Killer{next: next, trigger: trig, after: after} }})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	ag, err := agent.New(agent.Config{TPM: tp, StateDir: os.Getenv(r7DirEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(2)
	}
	switch op := os.Getenv(r7OpEnv); op {
	case "provision":
		_, err = ag.Provision(ctx, review7Req(false))
	case "provision-force":
		_, err = ag.Provision(ctx, review7Req(true))
	case "reanchor":
		_, err = ag.AuditReanchor(ctx)
	case "zeroize":
		_, err = ag.Zeroize(ctx, api.ZeroizeOptions{})
	case "seal":
		_, err = ag.Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
	default:
		err = fmt.Errorf("no op %q", op)
	}
	fmt.Fprintf(os.Stderr, "the operation ended without the kill: %v\n", err)
	os.Exit(3)
}

// review7RunKilled runs the child on env (closed for it) and returns once
// it is dead; the child must die of its SIGKILL.
func review7RunKilled(t *testing.T, env *swtpmtest.Env, dir, op, trigger string, after int) {
	t.Helper()
	env.CloseTPM()
	cmd := exec.Command(os.Args[0], "-test.run=^TestReview7KillAtEachStep$", "-test.count=1")
	cmd.Env = append(os.Environ(), r7ChildEnv+"=1", r7SpecEnv+"="+env.Spec, r7DirEnv+"="+dir, r7OpEnv+"="+op,
		r7TriggerEnv+"="+trigger, r7AfterEnv+"="+strconv.Itoa(after))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("not mounted: the child ended with %v:\n%s", err, stderr.Bytes())
	}
	env.Reopen()
	t.Logf("killed; the next open flushed %d handles the child left", env.TPM.StaleFlushed())
}

// review7Recover is what comes after a crash, as an operator would do it:
// status, audit repair --anchor-last when status says the last line is
// unanchored, audit reanchor when verify says the anchor moved (the crash
// was inside a new anchor's making, after the old index went: as before
// the gate was persistent); then the next operation (provision when there
// is no PK, else seal) and verify. The gate is then either persistent and
// the trail's (audit.gate names 0x81007601, which holds it) or transient
// and nothing at 0x81007601 (no gate_handle): persistent reports which.
// Then zeroize (the persistent handles as on a fresh TPM), provision
// again (the gate persistent), verify, and nothing left in the TPM. It
// returns the remedies used.
//
// force: the next operation, where there is no PK, is provision --force,
// as an operator runs a killed provision --force again. The gate the other
// state left at 0x81007601 is not this state's to take where a record
// before it begins the new trail (a plain record leaves an object it does
// not know for provd's there: the sixth review's
// TestReview6NewTrailKeepsOrRecordsAForeignPersistentObject), and the
// trail's gate may then stay transient.
func review7Recover(t *testing.T, env *swtpmtest.Env, dir string, baseline int, force bool) (remedies []string, persistent bool) {
	t.Helper()
	ctx := context.Background()
	withAgent(t, env, dir, "after the crash", func(ag *agent.Agent) {
		st, err := ag.Status(ctx)
		if err != nil {
			t.Fatalf("status after the crash: %v", err)
		}
		if st.AuditError != "" {
			if _, err := ag.AuditRepair(ctx, true); err == nil {
				remedies = append(remedies, "repair")
			}
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			if !errors.Is(err, api.ErrTampered) {
				t.Fatalf("verify after the crash: %v (exit %d)", err, api.ExitCode(err))
			}
			t.Logf("verify after the crash: %v", err)
			if _, err := ag.AuditReanchor(ctx); err != nil {
				t.Fatalf("reanchor after the crash: %v", err)
			}
			remedies = append(remedies, "reanchor")
		}
		if st.Provisioned {
			if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("after"), PCRs: []int{7}}); err != nil {
				t.Fatalf("seal after the crash: %v (exit %d)", err, api.ExitCode(err))
			}
		} else if _, err := ag.Provision(ctx, review7Req(force)); err != nil {
			t.Fatalf("provision after the crash: %v (exit %d)", err, api.ExitCode(err))
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("verify after the next operation: %v", err)
		}
	})
	g := editGate(t, dir, nil)
	persistent = g["gate_handle"] != nil
	if persistent {
		review7GateOK(t, env.TPM, dir, "after the next operation")
		if n := len(review7Persistent(t, env.TPM)); n != baseline+1 {
			t.Errorf("after the next operation: %d persistent objects, want %d (the fresh TPM's and the gate)", n, baseline+1)
		}
	} else if hs := review7Persistent(t, env.TPM); force && len(hs) == baseline+1 && slices.Contains(hs, agent.AuditGateHandle) {
		// Killed before it evicted the other state's gate: the next
		// trail, begun by a record before the provision (so not under
		// --force), does not take an object it cannot tell for its own
		// (the sixth review's rule); zeroize below evicts it.
		t.Logf("the other state's gate left at 0x%08x, this trail's transient", uint32(agent.AuditGateHandle))
	} else if len(hs) != baseline || slices.Contains(hs, agent.AuditGateHandle) {
		t.Errorf("after the next operation, the gate transient: persistent objects %x, want the fresh TPM's %d", hs, baseline)
	}
	withAgent(t, env, dir, "zeroize", func(ag *agent.Agent) {
		res, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
		if err != nil || !res.GateEvicted {
			t.Fatalf("zeroize: %+v %v", res, err)
		}
	})
	if hs := review7Persistent(t, env.TPM); force && len(hs) == baseline+1 && slices.Contains(hs, agent.AuditGateHandle) {
		// Zeroize evicts only its trail's gate (the eighth review): the
		// other state's stays, for the next provision to take and record.
		t.Logf("after zeroize the other state's gate is still at 0x%08x", uint32(agent.AuditGateHandle))
	} else if len(hs) != baseline {
		t.Errorf("after zeroize: persistent objects %x, want the fresh TPM's %d", hs, baseline)
	}
	withAgent(t, env, dir, "provision after zeroize", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
			t.Fatalf("provision after zeroize: %v", err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("verify: %v", err)
		}
	})
	review7GateOK(t, env.TPM, dir, "after provision again")
	review7NoLeftovers(t, env.TPM, "at the end")
	return remedies, persistent
}

// A provd process killed right after each TPM command of the persistent
// gate's making (persistGate: after the anchor's NV_DefineSpace, its Load,
// the Evict of what was at 0x81007601, the Persist, the Flush, and the
// first proof after), of its re-persist by a record whose proof in place
// failed (the Evict, the Persist), and of zeroize's last steps (the
// anchor's undefine, the gate's ReadPublic, EvictControl and read-back).
// After each: the state opens, the trail verifies (after repair or
// reanchor only where a crash inside a new anchor's making called for it
// before the gate was persistent), the next operation works, the gate is
// persistent and the trail's, zeroize leaves the persistent handles as on
// a fresh TPM, provision works again, and nothing is left in the TPM.
func TestReview7KillAtEachStep(t *testing.T) {
	t.Parallel()
	if os.Getenv(r7ChildEnv) != "" {
		review7Child()
		return
	}
	type scenario struct {
		name    string
		setup   func(t *testing.T, env *swtpmtest.Env) (dir string) // the state the child works on
		op      string
		trigger string
		afters  []int
	}
	provisioned := func(t *testing.T, env *swtpmtest.Env) string {
		dir := stateDir(t)
		withAgent(t, env, dir, "setup", func(ag *agent.Agent) {
			if _, err := ag.Provision(context.Background(), review7Req(false)); err != nil {
				t.Fatal(err)
			}
		})
		return dir
	}
	// takeAway: the persistent gate gone (evicted) or another key at its
	// handle: the child's record proves it in vain, loads it, re-persists.
	takeAway := func(foreign bool) func(t *testing.T, env *swtpmtest.Env) string {
		return func(t *testing.T, env *swtpmtest.Env) string {
			dir := provisioned(t, env)
			if foreign {
				agent.PlantGateKey(t, env.TPM, true)
			} else if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
				t.Fatal(err)
			}
			return dir
		}
	}
	// unpinned: a trail begun before first contact (a provision refused
	// for want of trust is recorded), whose gate the next provision moves
	// to one made through the pinned SRK (gateThroughPinnedSRK).
	unpinned := func(t *testing.T, env *swtpmtest.Env) string {
		dir := stateDir(t)
		withAgent(t, env, dir, "setup", func(ag *agent.Agent) {
			req := review7Req(false)
			req.TrustOnFirstUse = false
			if _, err := ag.Provision(context.Background(), req); err == nil {
				t.Fatal("provision without trust in the TPM worked")
			}
		})
		if g := editGate(t, dir, nil); g["gate_name"] == nil || g["srk_name"] != nil {
			t.Fatalf("not mounted: audit.gate is %v, want a gate made before first contact", g)
		}
		return dir
	}
	scenarios := []scenario{
		{"new trail (provision)", func(t *testing.T, _ *swtpmtest.Env) string { return stateDir(t) }, "provision", "define-anchor", []int{0, 1, 2, 3, 4, 5}},
		{"audit reanchor", provisioned, "reanchor", "define-anchor", []int{0, 1, 2, 3, 4}},
		// Killed after the old anchor's removal and the steps after it (found
		// by make test's power-cut test: a provision moving a trail begun
		// before first contact, killed after the removal, left a trail whose
		// anchor was gone, which only an officer's reanchor took).
		{"audit reanchor", provisioned, "reanchor", "undefine-anchor", []int{0, 1, 7}},
		{"provision moving a gate made before first contact", unpinned, "provision", "undefine-anchor", []int{0, 1, 7}},
		{"provision --force over another state's trail", func(t *testing.T, env *swtpmtest.Env) string {
			provisioned(t, env)
			return stateDir(t)
		}, "provision-force", "define-anchor", []int{0, 1, 2, 3, 4}},
		{"zeroize", provisioned, "zeroize", "evict-gate", []int{0, 1, 2, 3}},
		{"re-persist, the gate evicted", takeAway(false), "seal", "evict-gate", []int{0, 1}},
		{"re-persist, another key in its place", takeAway(true), "seal", "evict-gate", []int{0, 1}},
	}
	for _, sc := range scenarios {
		for _, after := range sc.afters {
			t.Run(fmt.Sprintf("%s/killed %d commands after the %s", sc.name, after, sc.trigger), func(t *testing.T) {
				env := swtpmtest.Start(t)
				env.RequireSimulator()
				baseline := review7Baseline(t, env.TPM)
				dir := sc.setup(t, env)
				review7RunKilled(t, env, dir, sc.op, sc.trigger, after)
				t.Logf("persistent objects after the kill: %x", review7Persistent(t, env.TPM))
				remedies, persistent := review7Recover(t, env, dir, baseline, sc.op == "provision-force")
				t.Logf("remedies: %v", remedies)
				if !persistent && sc.op != "provision-force" {
					t.Errorf("after the kill and the next operation the trail's gate is transient")
				}
				if slices.Contains(remedies, "reanchor") && sc.op != "provision-force" {
					t.Errorf("a crash in %s left a trail that only an officer's reanchor took", sc.name)
				}
			})
		}
	}
}

// The same steps with the TPM power-cut right after the command's answer
// (swtpm killed and started again under the running provd: transient
// objects and sessions gone, persistent ones and NV kept), the operation
// going on as it can in the same process. The operation may fail; nothing
// is called forged or a wrong value, nothing is left in the TPM, and what
// follows is as after a kill (review7Recover).
func TestReview7PowerCutAtEachStep(t *testing.T) {
	t.Parallel()
	type scenario struct {
		name    string
		setup   func(t *testing.T, env *swtpmtest.Env) string
		op      func(ag *agent.Agent) error
		trigger string
		afters  []int
	}
	ctx := context.Background()
	provisioned := func(t *testing.T, env *swtpmtest.Env) string {
		dir := stateDir(t)
		withAgent(t, env, dir, "setup", func(ag *agent.Agent) {
			if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
				t.Fatal(err)
			}
		})
		return dir
	}
	evicted := func(t *testing.T, env *swtpmtest.Env) string {
		dir := provisioned(t, env)
		if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	seal := func(ag *agent.Agent) error {
		_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
		return err
	}
	scenarios := []scenario{
		{"new trail (provision)", func(t *testing.T, _ *swtpmtest.Env) string { return stateDir(t) },
			func(ag *agent.Agent) error { _, err := ag.Provision(ctx, review7Req(false)); return err }, "define-anchor", []int{0, 1, 2, 3, 4, 5}},
		{"audit reanchor", provisioned, func(ag *agent.Agent) error { _, err := ag.AuditReanchor(ctx); return err }, "define-anchor", []int{0, 1, 2, 3, 4}},
		{"zeroize", provisioned, func(ag *agent.Agent) error { _, err := ag.Zeroize(ctx, api.ZeroizeOptions{}); return err }, "evict-gate", []int{0, 1, 2, 3}},
		{"re-persist, the gate evicted", evicted, seal, "evict-gate", []int{0, 1}},
	}
	for _, ev := range swtpmtest.Events {
		for _, sc := range scenarios {
			for _, after := range sc.afters {
				t.Run(fmt.Sprintf("%s/%s %d commands after the %s", sc.name, ev, after, sc.trigger), func(t *testing.T) {
					b := &swtpmtest.Bus{}
					env := swtpmtest.Start(t, swtpmtest.WithBus(b))
					env.RequireSimulator()
					baseline := review7Baseline(t, env.TPM)
					dir := sc.setup(t, env)
					trig := review7Triggers[sc.trigger]
					armed, count, fired := false, 0, false
					b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
						rsp, err := next.Send(cmd)
						if fired {
							return rsp, err, true
						}
						switch {
						case !armed && trig(cmd):
							armed = true
						case armed:
							count++
						default:
							return rsp, err, true
						}
						if count == after {
							fired = true
							env.Event(ev)
						}
						return rsp, err, true
					})
					var err error
					withAgent(t, env, dir, "the operation", func(ag *agent.Agent) { err = sc.op(ag) })
					b.Set(nil)
					if !fired {
						t.Fatalf("not mounted (%v)", err)
					}
					t.Logf("%s with a %s %d commands after the %s: %v (exit %d)", sc.name, ev, after, sc.trigger, err, api.ExitCode(err))
					if errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
						t.Errorf("an honest %s called forged or a wrong value: %v", ev, err)
					}
					review7NoLeftovers(t, env.TPM, "after the operation")
					t.Logf("persistent objects after it: %x", review7Persistent(t, env.TPM))
					remedies, persistent := review7Recover(t, env, dir, baseline, false)
					t.Logf("remedies: %v; the gate persistent after the next operation: %v", remedies, persistent)
					if slices.Contains(remedies, "reanchor") {
						t.Errorf("a %s in %s left a trail that only an officer's reanchor took", ev, sc.name)
					}
				})
			}
		}
	}
}

// review7Seal is a one-shot seal on dir (a new agent) with the commands it
// sent through b.
func review7Seal(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus, dir string) []tpm2.TPMCC {
	t.Helper()
	cmds, err := sealCommands(t, env, b, dir)
	if err != nil {
		t.Fatalf("seal: %v (exit %d)", err, api.ExitCode(err))
	}
	return cmds
}

// FLAW. persistGate decides for good from one try: when any step fails,
// the trail's audit.gate is written without gate_handle, and nothing ever
// makes that trail's gate persistent again (withGate re-persists only a
// gate the record names persistent). A reset or power cut between the
// gate's Load and its Persist (both honest, and the provision itself
// succeeds) so costs every record of the trail the Load and the flush
// issue 14 took away, silently (a Debug line), until the next reanchor or
// zeroize. Held would be: within a few records the trail's gate is
// persistent again and a record sends one Load (the PK's).
func TestReview7PersistenceLostForGoodAfterAnHonestFault(t *testing.T) {
	t.Parallel()
	for _, ev := range []string{"power cut", "reset"} {
		for _, after := range []int{1, 2} { // after persistGate's Load; after its Evict
			t.Run(fmt.Sprintf("%s after persistGate's %s", ev, []string{"", "Load", "Evict"}[after]), func(t *testing.T) {
				b := &swtpmtest.Bus{}
				env := swtpmtest.Start(t, swtpmtest.WithBus(b))
				env.RequireSimulator()
				dir := stateDir(t)
				trig := review7Triggers["define-anchor"]
				armed, count, fired := false, 0, false
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					rsp, err := next.Send(cmd)
					if fired {
						return rsp, err, true
					}
					if armed {
						count++
					} else if trig(cmd) {
						armed = true
					}
					if armed && count == after {
						fired = true
						env.Event(ev)
					}
					return rsp, err, true
				})
				withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
					if _, err := ag.Provision(context.Background(), review7Req(false)); err != nil {
						t.Fatalf("provision: %v", err)
					}
				})
				b.Set(nil)
				if !fired {
					t.Fatal("not mounted")
				}
				var loads []int
				for range 3 {
					loads = append(loads, swtpmtest.Count(review7Seal(t, env, b, dir), tpm2.TPMCCLoad))
				}
				if _, err := newAgent(t, env, dir).AuditVerify(context.Background()); err != nil {
					t.Fatal(err)
				}
				review7NoLeftovers(t, env.TPM, "after the seals")
				g := editGate(t, dir, nil)
				t.Logf("loads per seal %v; audit.gate gate_handle %v; 0x%08x holds %q", loads, g["gate_handle"], uint32(agent.AuditGateHandle), persistentGateName(t, env.TPM))
				if loads[len(loads)-1] != 1 || g["gate_handle"] == nil {
					t.Errorf("FLAW: one honest %s during provision's persistGate left the trail's gate transient for good: "+
						"three records later each still loads it (TPM2_Load per seal %v, want the PK's 1), audit.gate names no gate_handle, and 0x%08x is empty",
						ev, loads, uint32(agent.AuditGateHandle))
				}
			})
		}
	}
}

// Over many trails (provision, provision --force over another state's
// anchor, reanchor, provision --force in place, a gate taken away and
// re-persisted by a record, the daemon's records, zeroize, zeroize --srk)
// the TPM holds the fresh TPM's persistent objects, the SRK and one gate
// (none after zeroize), and no transient object or session.
func TestReview7PersistentHandlesOverManyTrails(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	fresh := review7Persistent(t, env.TPM)
	base := review7Baseline(t, env.TPM)
	step := func(what string, gate bool, fn func() error) {
		t.Helper()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v (exit %d)", what, err, api.ExitCode(err))
		}
		want := base
		if gate {
			want++
		}
		if hs := review7Persistent(t, env.TPM); len(hs) != want {
			t.Errorf("after %s: persistent objects %x, want %d", what, hs, want)
		}
		review7NoLeftovers(t, env.TPM, "after "+what)
	}
	on := func(dir string, fn func(ag *agent.Agent) error) func() error {
		return func() error {
			var err error
			withAgent(t, env, dir, "step", func(ag *agent.Agent) { err = fn(ag) })
			return err
		}
	}
	seal := func(ag *agent.Agent) error {
		_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
		return err
	}
	dir := stateDir(t)
	for round := range 3 {
		r := func(s string) string { return fmt.Sprintf("round %d: %s", round, s) }
		if round == 0 {
			step(r("provision"), true, on(dir, func(ag *agent.Agent) error { _, err := ag.Provision(ctx, review7Req(false)); return err }))
		} else {
			dir = stateDir(t)
			step(r("provision --force over the last trail"), true, on(dir, func(ag *agent.Agent) error { _, err := ag.Provision(ctx, review7Req(true)); return err }))
		}
		step(r("seal"), true, on(dir, seal))
		step(r("reanchor"), true, on(dir, func(ag *agent.Agent) error { _, err := ag.AuditReanchor(ctx); return err }))
		step(r("provision --force in place"), true, on(dir, func(ag *agent.Agent) error { _, err := ag.Provision(ctx, review7Req(true)); return err }))
		step(r("the gate taken away, a seal"), true, func() error {
			if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
				return err
			}
			return on(dir, seal)()
		})
		review7GateOK(t, env.TPM, dir, r("after the re-persist"))
		step(r("daemon records"), true, func() error {
			ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
			if err != nil {
				return err
			}
			defer ag.Close()
			for i := range 3 {
				if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", fmt.Sprint(i)); err != nil {
					return err
				}
			}
			return nil
		})
		step(r("zeroize"), false, on(dir, func(ag *agent.Agent) error { _, err := ag.Zeroize(ctx, api.ZeroizeOptions{}); return err }))
		step(r("provision after zeroize"), true, on(dir, func(ag *agent.Agent) error { _, err := ag.Provision(ctx, review7Req(false)); return err }))
		if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
			t.Fatalf("%s: %v", r("verify"), err)
		}
	}
	if err := on(dir, func(ag *agent.Agent) error { _, err := ag.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); return err })(); err != nil {
		t.Fatal(err)
	}
	if hs := review7Persistent(t, env.TPM); !slices.Equal(hs, fresh) {
		t.Errorf("after zeroize --srk: persistent objects %x, the fresh TPM had %x", hs, fresh)
	}
	review7NoLeftovers(t, env.TPM, "at the end")
}

// A TPM whose persistent slots are full (swtpm: 61 objects besides the
// EKs and the SRK, then TPM_RC_NV_SPACE; NV indices still fit): provision
// succeeds with the gate transient (no gate_handle, nothing at
// 0x81007601), records load it (one-shot and daemon), reanchor and zeroize
// work, and once a slot is free the next new anchor's gate is persistent.
func TestReview7FullPersistentSlots(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	fill := review7Fill(t, env.TPM)
	t.Logf("%d persistent objects made before the TPM refused one; %d in all", len(fill), len(review7Persistent(t, env.TPM)))
	full := len(review7Persistent(t, env.TPM))
	dir := stateDir(t)
	withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
			t.Fatalf("provision with the persistent slots full: %v", err)
		}
	})
	if g := editGate(t, dir, nil); g["gate_handle"] != nil {
		t.Errorf("audit.gate names gate_handle %v with no slot free", g["gate_handle"])
	}
	if got := persistentGateName(t, env.TPM); got != "" {
		t.Errorf("0x%08x holds %s", uint32(agent.AuditGateHandle), got)
	}
	for i := range 2 {
		cmds := review7Seal(t, env, b, dir)
		if n := swtpmtest.Count(cmds, tpm2.TPMCCLoad); n != 2 {
			t.Errorf("seal %d: %d loads, want the PK's and the gate's", i, n)
		}
	}
	withAgent(t, env, dir, "daemon", func(ag *agent.Agent) {
		for i := range 3 {
			if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", fmt.Sprint(i)); err != nil {
				t.Fatalf("daemon record %d: %v", i, err)
			}
		}
		if _, err := ag.AuditReanchor(ctx); err != nil {
			t.Fatalf("reanchor: %v", err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatal(err)
		}
	})
	review7NoLeftovers(t, env.TPM, "with the slots full")
	if n := len(review7Persistent(t, env.TPM)); n != full {
		t.Errorf("%d persistent objects, %d before provision", n, full)
	}
	withAgent(t, env, dir, "zeroize", func(ag *agent.Agent) {
		if res, err := ag.Zeroize(ctx, api.ZeroizeOptions{}); err != nil || !res.GateEvicted {
			t.Fatalf("zeroize: %+v %v", res, err)
		}
		if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
			t.Fatalf("provision after zeroize: %v", err)
		}
	})
	// A slot freed: the next new anchor makes its gate persistent.
	if err := env.TPM.Evict(fill[0]); err != nil {
		t.Fatal(err)
	}
	withAgent(t, env, dir, "reanchor with a slot free", func(ag *agent.Agent) {
		if _, err := ag.AuditReanchor(ctx); err != nil {
			t.Fatal(err)
		}
	})
	review7GateOK(t, env.TPM, dir, "after a reanchor with a slot free")
	if n := swtpmtest.Count(review7Seal(t, env, b, dir), tpm2.TPMCCLoad); n != 1 {
		t.Errorf("a seal with the gate persistent: %d loads", n)
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	review7NoLeftovers(t, env.TPM, "at the end")
}

// FLAW (cost). The gate persistent, then taken away while the persistent
// slots are full (evicted, say by an administrator freeing slots, and the
// slot taken by another application): each record's proof in place fails,
// the gate is loaded, and its re-persist is refused for want of a slot;
// audit.gate keeps naming the handle, so every record from then on pays
// the refused proof, its spend (flush and the witness's four commands),
// the load and two EvictControls, for good. The threat model says "28 to
// 30 commands once, then 16"; here it is 28 at every seal, where a trail
// whose gate is transient (gate_handle absent, as before the change) pays
// 18. The records work, the trail verifies, nothing is left.
func TestReview7GateGoneAndSlotsFullCostsEveryRecord(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	_, dir := signingState(t, env)
	normal := len(review7Seal(t, env, b, dir))
	if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
		t.Fatal(err)
	}
	review7Fill(t, env.TPM)
	var sizes []int
	for range 3 {
		sizes = append(sizes, len(review7Seal(t, env, b, dir)))
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	review7NoLeftovers(t, env.TPM, "after the seals")
	editGate(t, dir, func(g map[string]any) { delete(g, "gate_handle") })
	transient := len(review7Seal(t, env, b, dir))
	t.Logf("a one-shot seal: %d commands with the gate persistent; %v with it gone and no slot to make it persistent again; %d with audit.gate naming no handle",
		normal, sizes, transient)
	if sizes[1] > transient || sizes[2] > transient {
		t.Errorf("FLAW: with the persistent gate gone and no slot to make it persistent again, every seal sends %v TPM commands, "+
			"where the gate loaded each time (no gate_handle) costs %d: the failed re-persist is tried again at every record", sizes, transient)
	}
}

// review7EvictOnBus evicts 0x81007601 through next (as another holder of
// the owner's authorization would, between two of provd's commands).
func review7EvictOnBus(t *testing.T, next transport.TPM) {
	t.Helper()
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: agent.AuditGateHandle}, PersistentHandle: agent.AuditGateHandle}).Execute(next); err != nil {
		t.Errorf("evict 0x%08x on the bus: %v", uint32(agent.AuditGateHandle), err)
	}
}

// gateKeep: provision's second record goes on in the kept session with
// the persistent gate (PrepareGatedExtendAgain); when that proof fails
// (the gate evicted right before it), the kept session is spent, the gate
// loaded, proved in a new session and made persistent again: provision
// succeeds, the anchor is extended twice (the genesis and provision's
// record), nothing is left, the trail verifies.
func TestReview7GateKeepWithThePersistentGateGone(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	dir := stateDir(t)
	var mu sync.Mutex
	proofs, extends, evicted := 0, 0, false
	log := &swtpmtest.CommandLog{}
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		log.Hook(next, cmd)
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCNVExtend:
			extends++
		case tpm2.TPMCCPolicySecret:
			if tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditGateHandle {
				proofs++
				if proofs == 2 && !evicted {
					evicted = true
					review7EvictOnBus(t, next)
				}
			}
		}
		return nil, nil, false
	})
	log.Start()
	withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
			t.Fatalf("provision: %v (exit %d)", err, api.ExitCode(err))
		}
	})
	cmds := log.Stop()
	b.Set(nil)
	if !evicted {
		t.Fatal("not mounted")
	}
	if extends != 2 {
		t.Errorf("%d extends, want 2", extends)
	}
	t.Logf("provision with the gate evicted before the second proof: %d commands, %d loads", len(cmds), swtpmtest.Count(cmds, tpm2.TPMCCLoad))
	review7NoLeftovers(t, env.TPM, "after provision")
	review7GateOK(t, env.TPM, dir, "after provision")
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// Zeroize and its held gate: with the persistent gate gone before it
// (its zeroize-start record falls back and makes it persistent again),
// and with --srk (the last record proves the held gate after the SRK is
// evicted; the persistent gate is evicted after it): zeroize succeeds,
// says the gate evicted, leaves no gate and nothing transient, and the
// state provisions again.
func TestReview7ZeroizeWithTheGateGone(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		srk, gone bool
	}{{"gate gone", false, true}, {"--srk", true, false}, {"--srk, gate gone", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			env := swtpmtest.Start(t)
			ctx := context.Background()
			fresh := review7Persistent(t, env.TPM)
			_, dir := signingState(t, env)
			if tc.gone {
				if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
					t.Fatal(err)
				}
			}
			withAgent(t, env, dir, "zeroize", func(ag *agent.Agent) {
				res, err := ag.Zeroize(ctx, api.ZeroizeOptions{SRK: tc.srk})
				if err != nil || !res.GateEvicted || res.SRKEvicted != tc.srk {
					t.Fatalf("zeroize: %+v %v", res, err)
				}
			})
			hs := review7Persistent(t, env.TPM)
			want := slices.Clone(fresh)
			if !tc.srk && !slices.Contains(want, tpm.SRKHandle) {
				want = append(want, tpm.SRKHandle)
				slices.Sort(want)
			}
			if !slices.Equal(hs, want) {
				t.Errorf("after zeroize: persistent objects %x, want %x", hs, want)
			}
			review7NoLeftovers(t, env.TPM, "after zeroize")
			recs := archivedLast(t, dir)
			t.Logf("the archived trail ends with %q", recs)
			withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
				if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
					t.Fatal(err)
				}
				if _, err := ag.AuditVerify(ctx); err != nil {
					t.Fatal(err)
				}
			})
			review7GateOK(t, env.TPM, dir, "after provision again")
		})
	}
}

// archivedLast is the op of the last line of the state's archived trail.
func archivedLast(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if n := e.Name(); len(n) > 6 && n[:6] == "audit-" {
			b, err := os.ReadFile(dir + "/" + n)
			if err != nil {
				t.Fatal(err)
			}
			lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
			last := lines[len(lines)-1]
			if i := bytes.Index(last, []byte(`"op":"`)); i >= 0 {
				rest := last[i+6:]
				return string(rest[:bytes.IndexByte(rest, '"')])
			}
		}
	}
	t.Fatal("no archived trail")
	return ""
}

// The daemon's records (ReadPrepare: the anchor read and the gate's
// proof in one session) with the persistent gate evicted, or another key
// in its place: the record falls back, the gate is persistent again, and
// the next record is the 8 commands of a record that proves it in place.
// Nothing forged, nothing left, the trail verifies.
func TestReview7DaemonRecordWithTheGateGone(t *testing.T) {
	for _, foreign := range []bool{false, true} {
		t.Run(map[bool]string{false: "evicted", true: "another key in its place"}[foreign], func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			ctx := api.WithCaller(context.Background(), api.Caller{UID: 1})
			dir := stateDir(t)
			withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
				if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
					t.Fatal(err)
				}
			})
			ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
			if err != nil {
				t.Fatal(err)
			}
			defer ag.Close()
			record := func(i int) int {
				log := &swtpmtest.CommandLog{}
				b.Set(log.Hook)
				log.Start()
				err := ag.RecordRefusal(ctx, "key-delete", fmt.Sprint(i))
				cmds := log.Stop()
				b.Set(nil)
				if err != nil {
					t.Fatalf("record %d: %v (exit %d)", i, err, api.ExitCode(err))
				}
				return len(cmds)
			}
			record(0) // the daemon's first record opens its trail
			warm := record(1)
			if foreign {
				agent.PlantGateKey(t, env.TPM, true)
			} else if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
				t.Fatal(err)
			}
			fallback := record(2)
			after := record(3)
			t.Logf("daemon records: %d commands warm, %d with the gate gone, %d after", warm, fallback, after)
			if warm != 6 || after != 6 {
				t.Errorf("a daemon record with the gate persistent: %d and %d commands, want 6 (in the kept shared session)", warm, after)
			}
			review7GateOK(t, env.TPM, dir, "after the records")
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Fatal(err)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) > 1 { // the kept policy session may stay
				t.Errorf("left: %x %v", left, err)
			}
		})
	}
}

// A state from before the change (audit.gate without gate_handle, nothing
// at 0x81007601): records load the gate as before (no proof in place is
// tried), the daemon's too, verify passes, zeroize says the gate evicted
// (none was there) and leaves no persistent gate, and an officer's
// reanchor moves the trail to a persistent gate. (It is never moved
// otherwise: see TestReview7PersistenceLostForGoodAfterAnHonestFault.)
func TestReview7StateFromBeforeTheChange(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	fresh := review7Baseline(t, env.TPM)
	old := func(t *testing.T, force bool) string {
		dir := stateDir(t)
		withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
			if _, err := ag.Provision(ctx, review7Req(force)); err != nil {
				t.Fatal(err)
			}
		})
		editGate(t, dir, func(g map[string]any) { delete(g, "gate_handle") })
		if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dir := old(t, false)
	for i := range 2 {
		cmds := review7Seal(t, env, b, dir)
		if n, p := swtpmtest.Count(cmds, tpm2.TPMCCLoad), swtpmtest.Count(cmds, tpm2.TPMCCPolicySecret); n != 2 || p != 1 {
			t.Errorf("seal %d: %d loads and %d PolicySecrets, want 2 (the PK, the gate) and 1", i, n, p)
		}
	}
	withAgent(t, env, dir, "daemon", func(ag *agent.Agent) {
		for i := range 2 {
			if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if g := editGate(t, dir, nil); g["gate_handle"] != nil || persistentGateName(t, env.TPM) != "" {
		t.Errorf("the old state's gate was made persistent: %v", g["gate_handle"])
	}
	withAgent(t, env, dir, "reanchor", func(ag *agent.Agent) {
		if _, err := ag.AuditReanchor(ctx); err != nil {
			t.Fatal(err)
		}
	})
	review7GateOK(t, env.TPM, dir, "after reanchor")
	dir2 := old(t, true) // another old state (provision --force over the first trail)
	withAgent(t, env, dir2, "zeroize", func(ag *agent.Agent) {
		res, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
		if err != nil || !res.GateEvicted {
			t.Fatalf("zeroize of an old state: %+v %v", res, err)
		}
	})
	if n := len(review7Persistent(t, env.TPM)); n != fresh {
		t.Errorf("after zeroize: %d persistent objects, want %d", n, fresh)
	}
	review7NoLeftovers(t, env.TPM, "at the end")
}

// Two state directories on one TPM. A provisioned (its gate persistent);
// B, fresh, is refused provision, zeroize and reanchor (the anchor is A's)
// and sends no TPM2_EvictControl to 0x81007601 doing so: A's gate stays,
// A's records prove it in place, A's trail verifies. provision --force in
// B then takes the anchor and the handle (A's trail no longer verifies, as
// before the change). And a zeroize of A whose gate eviction failed (the
// gate left at the handle, the anchor gone) does not keep B from
// provisioning: B's new anchor evicts it, one gate stays.
func TestReview7TwoStateDirectories(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	base := review7Baseline(t, env.TPM)
	_, dirA := signingState(t, env)
	gateA := persistentGateName(t, env.TPM)
	dirB := stateDir(t)
	var mu sync.Mutex
	evicts := 0
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if review7Triggers["evict-gate"](cmd) {
			evicts++
		}
		return nil, nil, false
	})
	withAgent(t, env, dirB, "B", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, review7Req(false)); !errors.Is(err, api.ErrAlreadyProvisioned) {
			t.Errorf("B's provision over A's anchor: %v", err)
		}
		if _, err := ag.Zeroize(ctx, api.ZeroizeOptions{}); err == nil {
			t.Error("B's zeroize went through over A's anchor")
		}
		if _, err := ag.AuditReanchor(ctx); err == nil {
			t.Error("B's reanchor went through over A's anchor")
		}
	})
	b.Set(nil)
	if evicts != 0 {
		t.Errorf("B sent %d TPM2_EvictControl to 0x%08x", evicts, uint32(agent.AuditGateHandle))
	}
	if got := persistentGateName(t, env.TPM); got != gateA {
		t.Errorf("0x%08x holds %q, A's gate is %s", uint32(agent.AuditGateHandle), got, gateA)
	}
	if n := swtpmtest.Count(review7Seal(t, env, b, dirA), tpm2.TPMCCLoad); n != 1 {
		t.Errorf("A's seal after B's refusals: %d loads", n)
	}
	if _, err := newAgent(t, env, dirA).AuditVerify(ctx); err != nil {
		t.Fatalf("A's trail after B's refusals: %v", err)
	}
	withAgent(t, env, dirB, "B --force", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, review7Req(true)); err != nil {
			t.Fatal(err)
		}
	})
	review7GateOK(t, env.TPM, dirB, "B after provision --force")
	if n := len(review7Persistent(t, env.TPM)); n != base+1 {
		t.Errorf("%d persistent objects, want %d", n, base+1)
	}
	// B zeroized with its gate's eviction refused: the gate stays.
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 4 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) == agent.AuditGateHandle {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCNVUnavailable), nil, true
		}
		return nil, nil, false
	})
	withAgent(t, env, dirB, "B zeroize", func(ag *agent.Agent) {
		res, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
		t.Logf("B's zeroize with the gate's eviction refused: %+v %v", res, err)
	})
	b.Set(nil)
	left := persistentGateName(t, env.TPM)
	t.Logf("0x%08x after it: %q", uint32(agent.AuditGateHandle), left)
	dirC := stateDir(t)
	withAgent(t, env, dirC, "C", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
			t.Fatalf("C's provision after B's zeroize: %v", err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatal(err)
		}
	})
	review7GateOK(t, env.TPM, dirC, "C after provision")
	if n := len(review7Persistent(t, env.TPM)); n != base+1 {
		t.Errorf("%d persistent objects, want %d", n, base+1)
	}
	review7NoLeftovers(t, env.TPM, "at the end")
}

// review7Count is fn's TPM commands through b.
func review7Count(t *testing.T, b *swtpmtest.Bus, fn func() error) []tpm2.TPMCC {
	t.Helper()
	cmds, err := b.Commands(fn)
	if err != nil {
		t.Fatal(err)
	}
	return cmds
}

// The counts issue 14 claims, in process (a new agent per operation, the
// TPM already open: a process adds the open's 4), measured against the
// parent commit 166f1ff with the same sequence: provision +2 (38 to 40),
// audit reanchor +2 (22 to 24), provision --force over another state's
// trail +2 (35 to 37), a one-shot seal -2 (19 to 17), a daemon record -2
// (10 to 8), provision --force in place -4 (44 to 40). Since the sixth
// review's mends, a new anchor's persistGate reads the handle first
// (ReadPublic: its first EvictControl only when something is there, and
// only what is provd's to take) and, having loaded the gate, asks for the
// sweep (three GetCapability): provision 43, audit reanchor 28, provision
// --force over another state's trail 41. Since the record proves the gate
// in the policy session of the operation's last creation
// (tpm.PolicySession.Spare: no StartAuthSession, no FlushContext), each
// operation that creates under the PK is 2 fewer: provision 41, a one-shot
// seal 15, provision --force in place 38, over another state's trail 39.
// Since the daemon keeps the shared session between requests
// (tpm.TPM.KeepShared), its refusals recorded in it, a daemon record after
// the first is 2 fewer: 6. Since review 40, provision reads the SRK's
// handle once more as it commits (tpm.PersistSRKAgain: another process may
// have evicted it while provision ran): provision 42, provision --force in
// place 39, over another state's trail 40. Since review 71, provision asks
// the TPM whether it can use the officer key (TPM2_TestParms, one command;
// one more with a policy signer): provision 43, provision --force in place
// 40, over another state's trail 41.
func TestReview7CommandCountsAsClaimed(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	check := func(what string, cmds []tpm2.TPMCC, before, want int) {
		t.Helper()
		t.Logf("%s: %d commands (%d before the change)", what, len(cmds), before)
		if len(cmds) != want {
			t.Errorf("%s: %d commands, want %d (%d before the change): %v", what, len(cmds), want, before, cmds)
		}
	}
	dir := stateDir(t)
	check("provision", review7Count(t, b, func() error { _, err := newAgent(t, env, dir).Provision(ctx, review7Req(false)); return err }), 38, 43)
	if _, err := newAgent(t, env, dir).CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	check("one-shot seal", review7Count(t, b, func() error {
		_, err := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
		return err
	}), 19, 15)
	daemon, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	refuse := func() error { return daemon.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "x") }
	review7Count(t, b, refuse)
	check("daemon record", review7Count(t, b, refuse), 10, 6)
	daemon.Close()
	check("audit reanchor", review7Count(t, b, func() error { _, err := newAgent(t, env, dir).AuditReanchor(ctx); return err }), 22, 28)
	check("provision --force in place", review7Count(t, b, func() error { _, err := newAgent(t, env, dir).Provision(ctx, review7Req(true)); return err }), 44, 40)
	dir2 := stateDir(t)
	check("provision --force over another state's trail", review7Count(t, b, func() error {
		_, err := newAgent(t, env, dir2).Provision(ctx, review7Req(true))
		return err
	}), 35, 41)
}

// FLAW (cost). Zeroize sends one command more than before the change
// (measured against 166f1ff with this sequence: 35 to 36, --srk 37 to 38),
// where the change claims a command saving for every record: its
// zeroize-start record proves the persistent gate (Load and flush saved),
// but holdGate still loads the gate from its blob for the last record and
// flushes it, and the gate's eviction adds a ReadPublic, an EvictControl
// and a read-back. Without --srk the SRK stays, so the last record could
// prove the persistent gate too (no held gate: 2 fewer, 34). Mended so
// (34); with --srk the gate is still held, for a last record whose
// persistent gate may be gone and whose fallback cannot load under an
// evicted SRK: one more than before (38), the gate's eviction's price;
// and, since the eighth review, the sweep that held gate's load asks for
// (three GetCapability: 41).
func TestReview7ZeroizeCostsMoreThanBefore(t *testing.T) {
	for _, tc := range []struct {
		srk    bool
		before int
	}{{false, 35}, {true, 41}} {
		t.Run(fmt.Sprintf("srk %v", tc.srk), func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			_, dir := signingState(t, env)
			ag := newAgent(t, env, dir)
			cmds := review7Count(t, b, func() error {
				_, err := ag.Zeroize(context.Background(), api.ZeroizeOptions{SRK: tc.srk})
				return err
			})
			t.Logf("zeroize: %d commands, %d loads (%d before the change)", len(cmds), swtpmtest.Count(cmds, tpm2.TPMCCLoad), tc.before)
			if len(cmds) > tc.before {
				t.Errorf("FLAW: zeroize (srk %v) sends %d TPM commands, %d before the persistent gate; it still loads the gate for its last record (%d TPM2_Load) and adds ReadPublic, EvictControl and a read-back for the gate",
					tc.srk, len(cmds), tc.before, swtpmtest.Count(cmds, tpm2.TPMCCLoad))
			}
		})
	}
}

// Behind a resource manager's three sessions (swtpmtest.SessionLimit) the
// fallback's extra sessions (the spent proof's witness, the new policy
// session) fit beside what is kept: the daemon's kept key-use session and
// the operation's shared one. The persistent gate evicted, a daemon seal
// after a warm sign and a one-shot seal each record without a refusal for
// want of a slot, the gate is persistent again, the trail verifies.
func TestReview7GateGoneBehindTheSessionLimit(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithBus(b), swtpmtest.WithResourceManager())
	ctx := context.Background()
	_, dir := signingState(t, env)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	d := bytes.Repeat([]byte{1}, 32)
	if _, err := ag.Sign(ctx, "sig", d, api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, oneShot := range []bool{false, true} {
		if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
			t.Fatal(err)
		}
		l.Take()
		var err error
		if oneShot {
			_, err = sealCommands(t, env, b, dir)
		} else {
			_, err = ag.Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
		}
		refused, cmds := l.Take()
		t.Logf("seal (one-shot %v) with the gate gone: %v; %d commands, %d refused for want of a slot", oneShot, err, len(cmds), refused)
		if err != nil || refused != 0 {
			t.Errorf("seal (one-shot %v) with the gate gone behind the session limit: %v, %d refusals", oneShot, err, refused)
		}
		review7GateOK(t, env.TPM, dir, fmt.Sprintf("after the seal (one-shot %v)", oneShot))
	}
	if _, err := ag.Sign(ctx, "sig", d, api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// Zeroize killed in its last steps (after the anchor's undefine: the
// gate's ReadPublic, EvictControl, read-back), then zeroize run again
// rather than provision (an operator finishing what failed): it succeeds
// (beginning a trail to record it, as it did before the change), and the
// TPM holds no gate and nothing transient; provision works after.
func TestReview7ZeroizeAgainAfterAKillInItsLastSteps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for after := range 4 {
		t.Run(fmt.Sprintf("killed %d commands after the gate's eviction", after), func(t *testing.T) {
			env := swtpmtest.Start(t)
			env.RequireSimulator()
			base := review7Baseline(t, env.TPM)
			dir := stateDir(t)
			withAgent(t, env, dir, "setup", func(ag *agent.Agent) {
				if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
					t.Fatal(err)
				}
			})
			review7RunKilled(t, env, dir, "zeroize", "evict-gate", after)
			withAgent(t, env, dir, "zeroize again", func(ag *agent.Agent) {
				res, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
				if err != nil || !res.GateEvicted {
					t.Fatalf("zeroize again: %+v %v", res, err)
				}
			})
			if hs := review7Persistent(t, env.TPM); len(hs) != base {
				t.Errorf("after zeroize again: persistent objects %x, want %d", hs, base)
			}
			review7NoLeftovers(t, env.TPM, "after zeroize again")
			withAgent(t, env, dir, "provision", func(ag *agent.Agent) {
				if _, err := ag.Provision(ctx, review7Req(false)); err != nil {
					t.Fatal(err)
				}
				if _, err := ag.AuditVerify(ctx); err != nil {
					t.Fatal(err)
				}
			})
			review7GateOK(t, env.TPM, dir, "after provision")
		})
	}
}

// The kill test's child (every state-changing operation, killed at random
// moments; with power cuts too), with the persistent objects counted after
// each round: after the recovery (repair where status asks) and a record
// (which re-persists a gate a kill took away), the TPM holds at most the
// fresh TPM's objects, the SRK and one gate; when audit.gate names the
// handle, it holds that gate. How many rounds ended with the trail's gate
// transient is logged (TestReview7PersistenceLostForGoodAfterAnHonestFault).
// PROVD_KILLS sets the rounds (12 here).
func TestReview7RandomKillsLeaveOneGateAtMost(t *testing.T) {
	t.Parallel()
	for _, powerCuts := range []bool{false, true} {
		t.Run(map[bool]string{false: "kills", true: "power cuts"}[powerCuts], func(t *testing.T) {
			env := swtpmtest.Start(t)
			env.RequireSimulator()
			ctx := context.Background()
			base := review7Baseline(t, env.TPM)
			env.CloseTPM()
			dir := stateDir(t)
			seed := swtpmtest.Seed(t)
			rng := newReview7Rand(seed)
			kills := 12
			if n, err := strconv.Atoi(os.Getenv("PROVD_KILLS")); err == nil && n > 0 {
				kills = n
			}
			transient := 0
			for i := 1; i <= kills; i++ {
				var cut func()
				if powerCuts {
					cut = env.PowerCut
				}
				runAndKill(t, env.Spec, dir, time.Duration(50+rng.IntN(400))*time.Millisecond, rng.Uint64(), cut)
				env.Reopen()
				withAgent(t, env, dir, fmt.Sprintf("after kill %d", i), func(ag *agent.Agent) {
					st, err := ag.Status(ctx)
					if err != nil {
						t.Fatalf("after kill %d: status: %v", i, err)
					}
					if st.AuditError != "" {
						if _, err := ag.AuditRepair(ctx, true); err != nil {
							t.Fatalf("after kill %d: repair: %v", i, err)
						}
					}
					if st.Provisioned {
						if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "after the kill"); err != nil {
							t.Fatalf("after kill %d: a record: %v", i, err)
						}
					}
					if _, err := ag.AuditVerify(ctx); err != nil {
						t.Fatalf("after kill %d: verify: %v", i, err)
					}
				})
				hs := review7Persistent(t, env.TPM)
				if len(hs) > base+1 {
					t.Errorf("after kill %d: persistent objects %x (at most %d)", i, hs, base+1)
				}
				if _, err := os.Stat(dir + "/audit.gate"); err == nil {
					if g := editGate(t, dir, nil); g["gate_handle"] != nil {
						if got := persistentGateName(t, env.TPM); got != g["gate_name"] {
							t.Errorf("after kill %d: 0x%08x holds %q, audit.gate names %v", i, uint32(agent.AuditGateHandle), got, g["gate_name"])
						}
					} else {
						transient++
						if slices.Contains(hs, agent.AuditGateHandle) {
							t.Logf("after kill %d: the trail's gate is transient and 0x%08x holds %s", i, uint32(agent.AuditGateHandle), persistentGateName(t, env.TPM))
						}
					}
				}
				env.CloseTPM()
			}
			t.Logf("%d rounds; %d ended with the trail's gate transient", kills, transient)
			env.Reopen()
		})
	}
}

func newReview7Rand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }
