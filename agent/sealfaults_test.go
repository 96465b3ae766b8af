package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// TestChangedPCRReadSealsNothing: a seal to the PCRs' current values
// creates nothing unless the values it read are the TPM's. A1 changing the
// read's answer gets the seal refused as forged before any TPM2_Create. A
// creation made from the changed values and dropped afterwards would not
// do: its blob crosses the bus in the TPM's answer, A1 keeps it, and root
// on a bad boot that satisfies the PK's policy unseals it with the state's
// authValue (found by review, and the reason a plain read "witnessed" by
// the creation's data was reverted).
func TestChangedPCRReadSealsNothing(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, ag, _ := provisionedBehind(t, b)
	var mu sync.Mutex
	lied, creates := false, 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCCreate:
			creates++
		case tpm2.TPMCCPCRRead:
			if lied {
				break
			}
			rsp, err := next.Send(cmd)
			if err != nil || len(rsp) < 40 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return rsp, err, true
			}
			lied = true
			rsp = bytes.Clone(rsp)
			// The last byte of the last value read (PCR 16): the end of the
			// parameters, before the session area if there is one.
			end := len(rsp)
			if binary.BigEndian.Uint16(rsp[0:2]) == uint16(tpm2.TPMSTSessions) {
				end = 14 + int(binary.BigEndian.Uint32(rsp[10:14]))
			}
			rsp[end-1] ^= 1
			return rsp, nil, true
		}
		return nil, nil, false
	})
	blob, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7, 16}, AllowResettable: true})
	b.Set(nil)
	if !lied {
		t.Fatal("the attack did not run")
	}
	if err == nil || blob != nil {
		t.Fatalf("seal after a changed read: %d bytes, %v", len(blob), err)
	}
	if !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("seal after a changed read: %v, want tpm_response_forged", err)
	}
	if creates != 0 {
		t.Fatalf("%d TPM2_Create sent after a changed read: its answer carries an object sealed to A1's values", creates)
	}
	if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %x %v", left, lerr)
	}
}

// TestSealUnderBusFaults: A1 on every command of a seal to current PCRs
// (the sessions, the PCR read, the policy, Create, the flushes, the PK's
// load): forged, refused after the TPM ran it, answer lost, a byte changed,
// the handle changed; once and on every try. Nothing stays loaded; a seal
// that succeeds is sealed to the TPM's values and unseals; the seal's
// record is in the trail or pending exactly once and the trail verifies
// (found missing by the review of the witnessed seal). Since issue 14's
// spare the record proves the gate in the creation's policy session: its
// PolicySecret, PolicyCommandCode and extend are targets too, and a
// record that cannot prove there (the spare gone with a fault) starts a
// session of its own (StartAuthSession 3, when there is one).
func TestSealUnderBusFaults(t *testing.T) {
	t.Parallel()
	runFaultMatrix(t, []faultTarget{
		{tpm2.TPMCCPCRRead, 1}, {tpm2.TPMCCStartAuthSession, 2}, {tpm2.TPMCCStartAuthSession, 3},
		{tpm2.TPMCCPolicyPCR, 1}, {tpm2.TPMCCPolicyAuthValue, 1}, {tpm2.TPMCCCreate, 1},
		{tpm2.TPMCCFlushContext, 1}, {tpm2.TPMCCFlushContext, 2}, {tpm2.TPMCCFlushContext, 3}, {tpm2.TPMCCLoad, 1},
		{tpm2.TPMCCPolicySecret, 1}, {tpm2.TPMCCPolicyCommandCode, 1}, {tpm2.TPMCCNVExtend, 1},
	}, sealUnderFault)
}

func sealUnderFault(t *testing.T, f busFault) {
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	ctx := context.Background()
	secret := []byte("the disk key under fault")
	b.Set(f.hook())
	blob, err := ag.Seal(api.WithCaller(ctx, api.Caller{UID: 4242}), api.SealRequest{Data: secret, PCRs: []int{7, 16}, AllowResettable: true})
	b.Set(nil)
	t.Logf("seal under the fault: exit %d, %v", api.ExitCode(err), err)
	if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) != 0 {
		t.Errorf("left in the TPM after the faulted seal: %x %v", left, lerr)
	}
	if err == nil {
		truth, rerr := env.TPM.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7, 16})
		if rerr != nil {
			t.Fatal(rerr)
		}
		if got := sealedValues(t, blob); !got.Equal(policy.PCRValues{Bank: policy.BankSHA256, Values: truth}) {
			t.Errorf("sealed to %v, the TPM has %v", got, truth)
		}
		if out, uerr := ag.Unseal(ctx, blob); uerr != nil || !bytes.Equal(out, secret) {
			t.Errorf("unseal of what the faulted seal returned: %v", uerr)
		}
	}
	checkTrailAfterFault(t, env, ag, dir, f, "")
}

// sealedValues are the PCR values a sealed blob's policy was made from.
func sealedValues(t *testing.T, blob []byte) policy.PCRValues {
	t.Helper()
	var b struct {
		Policy struct {
			Values policy.PCRValues `json:"pcr_values"`
		} `json:"policy"`
	}
	if err := json.Unmarshal(blob, &b); err != nil {
		t.Fatal(err)
	}
	return b.Policy.Values
}
