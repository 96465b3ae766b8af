package tpm_test

// Review 5: attacks on GatedExtend.Close after the TPM's generation moved
// (0c2fd49: the session is forgotten, not flushed by its number; a proof
// that may live is "spent" by a witness or by sleeping until proofUntil,
// a time on provd's clock) and on sessionErrorWithoutSession (an error
// naming a session, in answer to a command sent with none, is forged).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
	"github.com/provd/provd/tpm/swtpm"
)

// review5Ioctl sends one swtpm_ioctl command to the control channel ctrl.
func review5Ioctl(t *testing.T, cmd, ctrl string) {
	t.Helper()
	if out, err := exec.Command("swtpm_ioctl", cmd, "--tcp", ctrl).CombinedOutput(); err != nil {
		t.Fatalf("swtpm_ioctl %s %s: %v: %s", cmd, ctrl, err, out)
	}
}

// review5SlowMigrate is env.Migrate with downtime: the TPM's volatile state
// saved (swtpm_ioctl -v), swtpm killed, down for `down`, then started again
// on the same address and state and initialised with that volatile state
// (-i), as a hypervisor moving a VM's TPM does when the copy takes time.
// env.Pid is pointed at the new process, which the Env's clean-up kills.
func review5SlowMigrate(t *testing.T, env *swtpmtest.Env, down time.Duration) {
	t.Helper()
	review5Ioctl(t, "-v", env.CtrlAddr)
	if p, err := os.FindProcess(env.Pid); err == nil {
		_ = p.Kill()
	}
	time.Sleep(down)
	var p *swtpm.Process
	var err error
	for try := 0; try < 30; try++ {
		if p, err = swtpm.StartOn(context.Background(), env.StateDir, env.Addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("start swtpm again: %v", err)
	}
	env.Pid = p.Pid
	env.CtrlAddr = p.CtrlAddr
	review5Ioctl(t, "-i", p.CtrlAddr)
}

// review5ReadClock is the TPM's Time (ms), raw on the bus's TPM side.
func review5ReadClock(t *testing.T, next transport.TPM) uint64 {
	t.Helper()
	rsp, err := (tpm2.ReadClock{}).Execute(next)
	if err != nil {
		t.Fatalf("ReadClock: %v", err)
	}
	return rsp.CurrentTime.Time
}

// A1 holds provd's gated NV_Extend while the TPM migrates (its volatile
// state, sessions included, comes back; the copy takes a few seconds, as
// a VM's TPM on a slow link or a host under load), and answers provd with
// the lost connection. provd's generation moved, so Close no longer
// flushes the session (which, after a migration, is still provd's, with
// the proof in it): the witness sees it, and Close sleeps until
// proofUntil on provd's clock. The TPM's clock, which the proof's
// expiration counts in, was stopped with the TPM while it moved. Once
// Close returns, A1 plays the held extend: provd holds if the TPM refuses
// it (the proof is dead when Close returns, TPM.spend's promise);
// it is broken if the anchor moves after Close said nothing can move it.
func TestReview5HeldExtendOutlivesCloseAfterSlowMigration(t *testing.T) {
	const down = 6 * time.Second
	r := newSharedAuthEnv(t)
	head := sha256.Sum256([]byte("review5 head"))
	ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
	if err != nil {
		t.Fatal(err)
	}
	before := r.anchor(t)
	clockBefore := review5ReadClock(t, r.bus.Next)
	hostBefore := time.Now()
	var held []byte
	r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if held != nil || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVExtend {
			return nil, nil, false
		}
		held = slices.Clone(cmd)
		review5SlowMigrate(t, r.env, down)
		// The connection provd had is gone: a command on it fails, and
		// provd's generation moves (the stream redials).
		gr := tpm2.GetRandom{BytesRequested: 8}
		_, err := gr.Execute(next)
		if err == nil {
			// The stream redialed at once (probe): lose the answer anyway.
			return nil, errLost, true
		}
		return nil, err, true
	})
	eerr := ge.Extend()
	r.bus.Set(nil)
	if eerr == nil {
		t.Fatal("the extend succeeded: A1 held it")
	}
	t.Logf("extend: %v", eerr)
	closeStart := time.Now()
	if err := ge.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	t.Logf("Close took %v", time.Since(closeStart))
	clockAfter := review5ReadClock(t, r.bus.Next)
	t.Logf("host time passed %v, TPM time passed %v ms", time.Since(hostBefore), clockAfter-clockBefore)

	// A1 plays the held extend now that Close has returned.
	rsp, err := r.bus.Next.Send(held)
	if err != nil {
		t.Fatal(err)
	}
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	now := r.anchor(t)
	if rc == tpm2.TPMRCSuccess || !bytes.Equal(now, before) {
		t.Errorf("the held extend ran after Close returned (rc 0x%x): anchor %x, was %x; a retry by provd now would extend it twice",
			uint32(rc), now, before)
	} else {
		t.Logf("the held extend after Close: rc 0x%x (refused)", uint32(rc))
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

// The same hold, with no downtime (env.Migrate): how long Close stalls
// (the witness sees the migrated session, so it sleeps out proofUntil,
// where the flush by number before 0c2fd49 ended it at once); the queue of
// a daemon waits as long. Recorded, and failed beyond the proof's bound.
func TestReview5CloseStallAfterMigration(t *testing.T) {
	r := newSharedAuthEnv(t)
	head := sha256.Sum256([]byte("review5 stall"))
	ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
	if err != nil {
		t.Fatal(err)
	}
	var held []byte
	r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if held != nil || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVExtend {
			return nil, nil, false
		}
		held = slices.Clone(cmd)
		r.env.Migrate()
		gr := tpm2.GetRandom{BytesRequested: 8}
		if _, err := gr.Execute(next); err != nil {
			return nil, err, true
		}
		return nil, errLost, true
	})
	eerr := ge.Extend()
	r.bus.Set(nil)
	t.Logf("extend: %v", eerr)
	start := time.Now()
	_ = ge.Close()
	took := time.Since(start)
	t.Logf("Close after a migration and a lost extend answer took %v", took)
	if took > 12*time.Second {
		t.Errorf("Close stalled %v, beyond the proof's bound", took)
	}
	rsp, err := r.bus.Next.Send(held)
	if err != nil {
		t.Fatal(err)
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc == tpm2.TPMRCSuccess {
		t.Errorf("the held extend ran after Close returned")
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

type review5Err string

func (e review5Err) Error() string { return string(e) }

const errLost = review5Err("A1: the answer was lost")

// sessionErrorWithoutSession calls any format-one error with the session
// bit, to a command sent with TPM_ST_NO_SESSIONS, forged. A genuine TPM
// (swtpm) is asked thousands of no-session commands with bad handles and
// parameters (policy commands on live policy, trial and HMAC sessions,
// session handles of every kind, garbage parameters): it must never give
// such an answer, or provd would call the TPM itself a forger. Sent raw
// (the bus's TPM side), so provd's check does not hide the TPM's words.
func TestReview5NoSessionCommandsNeverAnswerASessionError(t *testing.T) {
	r := newSharedAuthEnv(t)
	next := r.bus.Next
	var live []tpm2.TPMHandle
	for _, st := range []tpm2.TPMSE{tpm2.TPMSEPolicy, tpm2.TPMSETrial, tpm2.TPMSEHMAC} {
		nc := make([]byte, 16)
		rsp, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
			SessionType: st, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(next)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, rsp.SessionHandle)
	}
	// A policy session whose PolicySecret expired, for the time checks.
	handles := append(slices.Clone(live), 0x03000007, 0x02000007, 0x03ffffff, r.x.Handle, r.gate.Handle,
		0x81000001, tpm2.TPMRHOwner, tpm2.TPMRHNull, tpm2.TPMRSPW, 0x80000000, 0x40000007, 0)
	skip := map[tpm2.TPMCC]bool{tpm2.TPMCCShutdown: true, tpm2.TPMCCStartup: true}
	rng := rand.New(rand.NewPCG(5, 5))
	seen := map[uint32]int{}
	bad := 0
	for cc := tpm2.TPMCC(0x11f); cc <= 0x19f; cc++ {
		if skip[cc] {
			continue
		}
		for range 60 {
			var b []byte
			b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTNoSessions))
			b = binary.BigEndian.AppendUint32(b, 0)
			b = binary.BigEndian.AppendUint32(b, uint32(cc))
			for range rng.IntN(4) {
				b = binary.BigEndian.AppendUint32(b, uint32(handles[rng.IntN(len(handles))]))
			}
			switch rng.IntN(3) {
			case 0: // a TPM2B of random bytes
				n := rng.IntN(80)
				b = binary.BigEndian.AppendUint16(b, uint16(n))
				for range n {
					b = append(b, byte(rng.Uint32()))
				}
			case 1: // random bytes
				for range rng.IntN(64) {
					b = append(b, byte(rng.Uint32()))
				}
			default: // small structured values
				for range rng.IntN(6) {
					b = binary.BigEndian.AppendUint16(b, uint16(rng.IntN(0x20)))
				}
			}
			binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
			rsp, err := next.Send(b)
			if err != nil {
				t.Fatalf("cc 0x%x: %v", uint32(cc), err)
			}
			rc := binary.BigEndian.Uint32(rsp[6:10])
			seen[rc]++
			if rc&0x80 != 0 && rc&0x40 == 0 && rc&0x800 != 0 {
				bad++
				if bad < 10 {
					t.Errorf("genuine TPM answered no-session command 0x%x (%x) with 0x%x, a session's error: provd calls it forged", uint32(cc), b, rc)
				}
			}
		}
	}
	t.Logf("%d distinct response codes; %d session errors to no-session commands", len(seen), bad)
	for _, h := range live {
		_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(next)
	}
	r.env.NoLeakCheck() // random FlushContext/ContextLoad may have moved what the test holds
	_ = tpm.ErrResponseForged
}
