package tpm_test

// The premise of the daemon's rest when idle (agent/server, restWhenIdle),
// measured on the TPM: a session context saved and left there, as Linux's
// resource manager leaves an idle client's between its commands, bounds the
// session contexts the TPM saves after it.

import (
	"errors"
	"os"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
)

// A session context saved and left stops the TPM from saving any other
// session's context once about TPM_PT_CONTEXT_GAP_MAX (65,535 on swtpm) were
// saved after it: TPM_RC_CONTEXT_GAP, which Linux's resource manager, saving
// a client's sessions after its command, takes as that command's failure
// (drivers/char/tpm/tpm2-space.c: any error but TPM_RC_REFERENCE_H0 is
// -EFAULT). Loading the old context again (the resource manager does so
// for its client's next command) lets the saves go on. Measured 2026-12-06:
// 65,531 saves, then TPM_RC_CONTEXT_GAP. The saves run in make reliability
// (PROVD_CONTEXT_GAP=1); make test reads the TPM's gap only.
func TestIdleSavedSessionStopsOtherSavesAtTheContextGap(t *testing.T) {
	bus := &swtpmtest.Bus{}
	swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := bus.Next
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTContextGapMax), PropertyCount: 1}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) != 1 || props.TPMProperty[0].Property != tpm2.TPMPTContextGapMax {
		t.Fatalf("TPM_PT_CONTEXT_GAP_MAX: %v %v", props, err)
	}
	gap := int(props.TPMProperty[0].Value)
	if gap < 0xffff {
		t.Errorf("TPM_PT_CONTEXT_GAP_MAX is %d; the specification asks 2^k-1 with k at least 16", gap)
	}
	if os.Getenv("PROVD_CONTEXT_GAP") == "" {
		// 131,000 commands, 18 s (70 s under -race): make reliability.
		t.Logf("TPM_PT_CONTEXT_GAP_MAX %d; the saves up to it run with PROVD_CONTEXT_GAP=1 (make reliability)", gap)
		return
	}
	idle := startHMAC(t, tp)
	idleCtx := save(t, tp, idle)
	other := startHMAC(t, tp)
	defer flushAll(tp, other, idle)
	saved := 0
	for ; saved <= gap; saved++ {
		c, err := (tpm2.ContextSave{SaveHandle: other}).Execute(tp)
		if errors.Is(err, tpm2.TPMRCContextGap) {
			break
		}
		if err != nil {
			t.Fatalf("save %d: %v", saved, err)
		}
		if _, err := (tpm2.ContextLoad{Context: c.Context}).Execute(tp); err != nil {
			t.Fatalf("load %d: %v", saved, err)
		}
	}
	t.Logf("TPM_PT_CONTEXT_GAP_MAX %d; other session contexts saved after the idle one before TPM_RC_CONTEXT_GAP: %d", gap, saved)
	if saved > gap || saved < gap-16 {
		t.Fatalf("%d saves after the idle one, then TPM_RC_CONTEXT_GAP expected near %d", saved, gap)
	}
	if _, err := (tpm2.ContextLoad{Context: idleCtx}).Execute(tp); err != nil {
		t.Fatalf("the idle session's context loaded again: %v", err)
	}
	if _, err := (tpm2.ContextSave{SaveHandle: other}).Execute(tp); err != nil {
		t.Errorf("once the idle session is loaded again, a save: %v", err)
	}
}

func startHMAC(t *testing.T, tp transport.TPM) tpm2.TPMHandle {
	t.Helper()
	r, err := swtpmtest.StartOwnSession(tp, tpm2.TPMSEHMAC)
	if err != nil {
		t.Fatal(err)
	}
	return r.SessionHandle
}

func save(t *testing.T, tp transport.TPM, h tpm2.TPMHandle) tpm2.TPMSContext {
	t.Helper()
	r, err := (tpm2.ContextSave{SaveHandle: h}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return r.Context
}

func flushAll(tp transport.TPM, hs ...tpm2.TPMHandle) {
	for _, h := range hs {
		_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(tp)
	}
}
