package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// sessionCounter counts TPM2_StartAuthSession commands.
type sessionCounter struct {
	next transport.TPM
	n    atomic.Int64
}

// Send counts the policy sessions started (TPM_SE_POLICY); the salted HMAC
// sessions that guard Create and Load on the bus are not policy runs.
func (c *sessionCounter) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 22 && binary.BigEndian.Uint32(cmd[6:10]) == uint32(tpm2.TPMCCStartAuthSession) {
		// Two handles, then nonceCaller and encryptedSalt (TPM2Bs), then
		// the session type.
		at := 18
		for range 2 {
			if at+2 > len(cmd) {
				return c.next.Send(cmd)
			}
			at += 2 + int(binary.BigEndian.Uint16(cmd[at:at+2]))
		}
		if at < len(cmd) && tpm2.TPMSE(cmd[at]) == tpm2.TPMSEPolicy {
			c.n.Add(1)
		}
	}
	return c.next.Send(cmd)
}

// TestInstallPolicyRefusals: a well-formed signed policy whose signature
// does not verify is refused as not permitted (exit 5), a malformed file is
// bad input (exit 2). An install runs one policy session, whether it creates
// the derivation parent or not.
func TestInstallPolicyRefusals(t *testing.T) {
	sc := &sessionCounter{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		sc.next = next
		return sc
	}))
	ctx := context.Background()
	a := testAgent(t, env, nil)
	res, signed := provisionSigned(t, a)
	edit := func(b []byte, fn func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		fn(m)
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	good := signed(*res.Counter)
	for _, c := range []struct {
		name string
		data []byte
		want error
	}{
		{"signature flipped", edit(good, func(m map[string]any) {
			sig := m["signature"].(map[string]any)
			r := []byte(sig["r"].(string))
			if r[0] == '0' {
				r[0] = '1'
			} else {
				r[0] = '0'
			}
			sig["r"] = string(r)
		}), api.ErrNotPermitted},
		{"version raised after signing", edit(good, func(m map[string]any) { m["version"] = *res.Counter + 1 }), api.ErrNotPermitted},
		{"truncated", good[:len(good)/2], api.ErrBadInput},
		{"signature missing", edit(good, func(m map[string]any) { delete(m, "signature") }), api.ErrBadInput},
		{"not JSON", []byte("policy"), api.ErrBadInput},
	} {
		_, err := a.InstallPolicy(ctx, c.data)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		if c.want == api.ErrBadInput && errors.Is(err, api.ErrNotPermitted) || c.want == api.ErrNotPermitted && errors.Is(err, api.ErrBadInput) {
			t.Errorf("%s: %v also matches the other of bad input and not permitted", c.name, err)
		}
	}

	for i, v := range []uint64{*res.Counter, *res.Counter + 1} { // creates D, then D exists
		before := sc.n.Load()
		r, err := a.InstallPolicy(ctx, signed(v))
		if err != nil || !r.Satisfied {
			t.Fatalf("install %d: %+v %v", i, r, err)
		}
		// The first install creates D through one policy session, which
		// then proves the audit anchor's gate for its record (issue 14:
		// tpm.PolicySession.Spare); a later one decides "satisfied" from
		// authenticated reads, no policy session, and starts one for the
		// anchor's gate. And one per gated counter increment (install i
		// moves the counter i steps).
		want := int64(1 + i)
		if n := sc.n.Load() - before; n != want {
			t.Errorf("install %d: %d sessions started, want %d", i, n, want)
		}
	}
}

// A signed policy over PCRs software can reset is refused when signed
// without --allow-resettable, and at install on a PK provisioned without it
// (found by review: one over PCR 23 installed, and PCR_Reset unlocked the PK).
func TestSignedPolicyOverResettablePCRsRefused(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7, 23})
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: cur}
	if _, err := SignPKPolicy(signer, vals, *res.Counter, "", false); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("signing over PCR 23 without --allow-resettable: %v", err)
	}
	sp, err := SignPKPolicy(signer, vals, *res.Counter, "", true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sp.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := a.t.ReadCounter(PolicyCounterHandle)
	if _, err := a.InstallPolicy(ctx, b); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("install over PCR 23 on a PK provisioned without --allow-resettable: %v", err)
	}
	if after, _ := a.t.ReadCounter(PolicyCounterHandle); after != before {
		t.Fatalf("the refused install moved the counter %d -> %d", before, after)
	}
}

// provisionSigned provisions a with the test officer and a new policy
// signer, and returns the result with a maker of the signer's policy over
// PCR 7 as it is now, of each version.
func provisionSigned(t *testing.T, a *Agent) (api.ProvisionResult, func(version uint64) []byte) {
	t.Helper()
	res, signed, _ := provisionSignedBy(t, a)
	return res, signed
}

// provisionSignedBy is provisionSigned, with the policy signer.
func provisionSignedBy(t *testing.T, a *Agent) (api.ProvisionResult, func(version uint64) []byte, *ecdsa.PrivateKey) {
	t.Helper()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(t.Context(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: cur}
	return res, func(version uint64) []byte {
		sp, err := SignPKPolicy(signer, vals, version, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}, signer
}
