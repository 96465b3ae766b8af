package agent_test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// provd never moves the TPM's dictionary-attack counter by itself: with a
// threshold of 3 tries, a workload of every operation, successes and the
// refusals a user meets (a wrong approval, a ciphertext for another key, a
// tampered sealed blob, a revoked signed policy), leaves the counter at 0.
// Its objects are noDA, and it never guesses an authorization value. Once
// someone else has locked the TPM out, status says so and provd's work goes
// on.
func TestProvdNeverCountsTowardLockout(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	tp := env.TPM
	// TPM2_DictionaryAttackParameters (go-tpm v0.9.8 lacks it): lockout
	// handle, an empty password session; maxTries 3, recovery 1000 s.
	cmd := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, 0) // size, below
	cmd = binary.BigEndian.AppendUint32(cmd, 0x13A)
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHLockout))
	cmd = binary.BigEndian.AppendUint32(cmd, 9) // authorization area
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRSPW))
	cmd = append(cmd, 0, 0, 0, 0, 0) // nonce, attributes, hmac
	for _, v := range []uint32{3, 1000, 1000} {
		cmd = binary.BigEndian.AppendUint32(cmd, v)
	}
	binary.BigEndian.PutUint32(cmd[2:6], uint32(len(cmd)))
	if rsp, err := tp.Send(cmd); err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		t.Fatalf("TPM2_DictionaryAttackParameters: %x %v", rsp, err)
	}
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.CreateRequest{{Name: "sig", Type: "ecc-p256"}, {Name: "oaep", Type: "rsa-2048", Usage: "decrypt"}} {
		if _, err := ag.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(blob, &raw)
	var obj []byte
	_ = json.Unmarshal(raw["object"], &obj)
	obj[len(obj)-1] ^= 1
	raw["object"], _ = json.Marshal(obj)
	tampered, _ := json.Marshal(raw)
	for range 5 { // more than the threshold, each kind of refusal
		_, _ = ag.Sign(ctx, "sig", d[:], api.SignOptions{})
		_, _ = ag.HMAC(ctx, "mac", make([]byte, 3000))
		_, _ = ag.Unseal(ctx, blob)
		_, _ = ag.Unseal(ctx, tampered)
		_, _ = ag.Decrypt(ctx, "oaep", make([]byte, 256), crypto.SHA256)
		_, _ = ag.DeriveKey(ctx, api.DeriveRequest{Name: "x", Label: "x", Type: "ecc-p256"}) // no approval
	}
	info, err := tp.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Lockout.MaxTries != 3 || info.Lockout.Counter != 0 || info.Lockout.InLockout {
		t.Fatalf("after provd's workload: max tries %d, counter %d, in lockout %v; want 3, 0, false",
			info.Lockout.MaxTries, info.Lockout.Counter, info.Lockout.InLockout)
	}

	// The control: one wrong password on a DA-protected object moves the
	// counter, so the reading above can see a failure when there is one.
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := tpm.SealTemplate(nil)
	tmpl.ObjectAttributes.UserWithAuth, tmpl.ObjectAttributes.NoDA = true, false
	b, err := tp.Create(srk, nil, tmpl, tpm.Sensitive{UserAuth: []byte("right"), Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	o, err := tp.Load(srk, nil, b)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(o.Handle)
	if _, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: o.Handle, Name: o.Name, Auth: tpm2.PasswordAuth([]byte("wrong"))}}).Execute(tp); err == nil {
		t.Fatal("a wrong password unsealed")
	}
	if info, err := tp.Info(); err != nil || info.Lockout.Counter != 1 {
		t.Fatalf("the control: counter %d after one wrong password (%v), want 1", info.Lockout.Counter, err)
	}

	// An existing lockout (someone else's wrong passwords): status says
	// so, and provd's own work goes on (its objects are noDA).
	for i := 0; i < 5; i++ {
		if info, err := tp.Info(); err != nil || info.Lockout.InLockout {
			break
		}
		_, _ = (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: o.Handle, Name: o.Name, Auth: tpm2.PasswordAuth([]byte("wrong"))}}).Execute(tp)
	}
	if info, err := tp.Info(); err != nil || !info.Lockout.InLockout {
		t.Fatalf("the TPM did not lock out: %+v %v", info.Lockout, err)
	}
	st, err := ag.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(st.Warnings, func(w string) bool { return strings.Contains(w, "dictionary-attack lockout") }) {
		t.Errorf("status under lockout does not say so: %q", st.Warnings)
	}
	if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
		t.Errorf("sign under lockout: %v", err)
	}
	if _, err := ag.HMAC(ctx, "mac", []byte("x")); err != nil {
		t.Errorf("HMAC under lockout: %v", err)
	}
	if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "s" {
		t.Errorf("unseal under lockout: %q %v", got, err)
	}
}
