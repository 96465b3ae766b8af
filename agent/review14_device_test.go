package agent_test

// Review 14: a daemon sign whose device connection the kernel breaks at
// each of its commands in turn (tpm's deviceTransport, its opening again
// after EFAULT; the stand-in: swtpmtest.DeviceStandIn).

import (
	"context"
	"crypto/sha256"
	"errors"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Attack (brief 2): the daemon (agent with KeepSession: kept op session,
// kept shared session, the PK's saved context, a resident key) on
// /dev/tpmrm0; A2's flush breaks the space at every point of a warm sign in
// turn (the k-th command of the sign fails EFAULT, the device is opened
// again with the old space flushed by the kernel, A2 starting sessions of
// its own right after in the freed slots). Expected: each broken sign
// either fails with the device's error, never as tampered, forged or a
// policy failure, or succeeds afresh in the new space; the next sign
// works; nothing of the old space is used by its number in the new one (a
// transient handle of the old space is, under the kernel, EINVAL or
// another object of the new space); A2's sessions are never flushed; and
// the audit trail verifies at the end.
// Failed before the mend (review 14).
func TestReview14DaemonSignBrokenAtEveryCommand(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &swtpmtest.DeviceStandIn{Addr: env.Addr, KernelFlush: true}
	tp, err := tpm.Open(context.Background(), tpm.Options{Spec: "/dev/tpmrm0", ResourceManager: true, OpenDevice: s.Open})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: tp, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("review 14"))
	sign := func() error {
		_, err := ag.Sign(ctx, "sig", digest[:], api.SignOptions{})
		return err
	}
	for range 2 { // warm: everything kept
		if err := sign(); err != nil {
			t.Fatal(err)
		}
	}
	s.Mu.Lock()
	before := len(s.Log)
	s.Mu.Unlock()
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	s.Mu.Lock()
	n := len(s.Log) - before
	var warm []tpm2.TPMCC
	for _, c := range s.Log[before:] {
		warm = append(warm, swtpmtest.CommandCode(c.Cmd))
	}
	s.Mu.Unlock()
	t.Logf("a warm sign: %v", warm)
	var a2s []tpm2.TPMHandle
	s.Mu.Lock()
	s.OnOpen = func(raw transport.TPM) {
		for _, se := range []tpm2.TPMSE{tpm2.TPMSEPolicy, tpm2.TPMSEPolicy, tpm2.TPMSEHMAC, tpm2.TPMSEHMAC} {
			if h, err := swtpmtest.A2SessionOf(raw, se); err == nil {
				a2s = append(a2s, h)
			}
		}
	}
	s.Mu.Unlock()
	for k := 1; k <= n; k++ {
		s.Mu.Lock()
		s.ArmIn = k
		s.Mu.Unlock()
		err := sign()
		s.Mu.Lock()
		left, failed := s.ArmIn, s.Failed
		s.ArmIn, s.Failed = 0, nil
		s.Mu.Unlock()
		t.Logf("k=%d: the kernel failed %v; the sign: %v", k, failed, err)
		switch {
		case left > 0:
			t.Logf("k=%d: the sign took fewer commands", k)
		case err == nil:
		case errors.Is(err, api.ErrTampered) || errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrPolicyNotSatisfied):
			t.Errorf("k=%d: the broken sign misreported: %v", k, err)
		case !errors.Is(err, syscall.EFAULT):
			t.Errorf("k=%d: the broken sign's error does not name the device's failure: %v", k, err)
		}
		if err := sign(); err != nil {
			t.Errorf("k=%d: the next sign, the device opened again: %v", k, err)
		}
	}
	s.Mu.Lock()
	stale := s.Stale
	s.Mu.Unlock()
	if len(stale) > 0 {
		t.Errorf("transient handles of the old space used in the new one: %v", stale)
	}
	for _, h := range a2s {
		if !swtpmtest.A2Alive(s.A2Raw(), h) {
			t.Errorf("A2's session 0x%08x was flushed by provd", uint32(h))
		}
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("the audit trail after the broken signs: %v", err)
	}
	raw := s.A2Raw()
	for _, h := range a2s {
		_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(raw)
	}
}
