package policy_test

// These tests run the policy package's expressions on a real TPM (swtpm): a
// trial session's digest must equal Policy.Digest for every step kind, and
// real sessions must authorize exactly when the platform meets the policy.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// tpm.PolicySession is what Policy.Apply drives, and it tells Apply its
// hash. (Checked here: tpm imports nothing of policy, not even in tests.)
var (
	_ policy.Session        = (*tpm.PolicySession)(nil)
	_ policy.SessionHashAlg = (*tpm.PolicySession)(nil)
)

// NV handles the tests define (owner range); each test undefines its own.
const (
	counterHandle tpm2.TPMHandle = 0x01500010
)

type tpmSigner struct {
	name   string
	signer crypto.Signer
}

// tpmSigners returns one signer of each approved kind: ECDSA P-256 and P-384
// (fresh) and RSA-PSS 3072 (the fixed test key in testdata).
func tpmSigners(t *testing.T) []tpmSigner {
	t.Helper()
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := os.ReadFile("testdata/rsa3072-test-only.pem")
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := policy.ParseSignerPEM(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	return []tpmSigner{{"ecdsa-p256", p256}, {"ecdsa-p384", p384}, {"rsapss-3072", rsaKey}}
}

// currentValues reads the current SHA-256 values of pcrs from the TPM.
func currentValues(t *testing.T, tp *tpm.TPM, pcrs ...int) policy.PCRValues {
	t.Helper()
	vals, err := tp.PCRRead(tpm2.TPMAlgSHA256, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	return policy.PCRValues{Bank: policy.BankSHA256, Values: vals}
}

// trialDigest applies p to a trial session and returns the TPM's digest.
func trialDigest(t *testing.T, tp *tpm.TPM, p policy.Policy, opts policy.ApplyOptions) []byte {
	t.Helper()
	ps, err := tp.StartPolicySession(true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := ps.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := p.Apply(ps, opts); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	d, err := ps.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// defineCounter defines a policy counter for the test and undefines it at
// the end.
func defineCounter(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) policy.NVCounterRef {
	t.Helper()
	x, err := tp.DefineCounter(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tp.UndefineNV(h); err != nil {
			t.Errorf("undefine counter: %v", err)
		}
	})
	return policy.NVCounterRef{Handle: h, Name: x.Name.Buffer}
}

func readCounter(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) uint64 {
	t.Helper()
	v, err := tp.ReadCounter(h)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// The TPM's trial session and the offline calculator agree for every step
// kind.
func TestTPMTrialDigestsMatch(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	cur := currentValues(t, tp, 0, 7, 16)
	many := currentValues(t, tp, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 23)
	other := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{7: bytes.Repeat([]byte{7}, 32), 16: bytes.Repeat([]byte{16}, 32)}}
	objName := append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{0xab}, 32)...)
	counter := defineCounter(t, tp, counterHandle)
	version := readCounter(t, tp, counterHandle) + 3

	type tc struct {
		name string
		p    policy.Policy
		opts policy.ApplyOptions
	}
	cases := []tc{
		{name: "pcr", p: policy.Policy{policy.PCR{Values: cur}}},
		{name: "pcr-18-of-them", p: policy.Policy{policy.PCR{Values: many}}},
		{name: "or-branch-0", p: policy.Policy{policy.Or{Branches: []policy.Policy{
			{policy.PCR{Values: cur}}, {policy.PCR{Values: other}},
		}}}, opts: policy.ApplyOptions{Branches: []int{0}}},
		{name: "or-branch-1", p: policy.Policy{policy.Or{Branches: []policy.Policy{
			{policy.PCR{Values: cur}}, {policy.PCR{Values: other}, policy.CommandCode{CC: tpm2.TPMCCUnseal}},
		}}}, opts: policy.ApplyOptions{Branches: []int{1}}},
		{name: "command-code", p: policy.Policy{policy.CommandCode{CC: tpm2.TPMCCUnseal}}},
		{name: "pcr-then-command-code", p: policy.Policy{policy.PCR{Values: cur}, policy.CommandCode{CC: tpm2.TPMCCUnseal}}},
		{name: "duplication-select", p: policy.Policy{
			policy.DuplicationSelect{NewParentName: srk.Name.Buffer, ObjectName: objName},
			policy.CommandCode{CC: tpm2.TPMCCDuplicate},
		}},
		{name: "duplication-select-include-object", p: policy.Policy{
			policy.DuplicationSelect{NewParentName: srk.Name.Buffer, ObjectName: objName, IncludeObject: true},
			policy.CommandCode{CC: tpm2.TPMCCDuplicate},
		}},
		{name: "duplication-select-null-parent", p: policy.Policy{
			policy.DuplicationSelect{NewParentName: binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHNull)), ObjectName: objName},
		}},
		{name: "nv", p: policy.Policy{policy.NV{
			IndexName: counter.Name, Index: counter.Handle, OperandB: u64(version), Op: tpm2.TPMEOUnsignedLE,
		}}},
		{name: "nv-other-op", p: policy.Policy{policy.NV{
			IndexName: counter.Name, Index: counter.Handle, OperandB: u64(1), Offset: 0, Op: tpm2.TPMEOUnsignedGT,
		}}},
		{name: "approved-policy", p: policy.ApprovedPolicy(cur, version, counter)},
	}
	ref := []byte("provd-test")
	for _, s := range tpmSigners(t) {
		sp, err := policy.SignPolicy(s.signer, cur, version, ref, counter)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, tc{
			name: "authorize-" + s.name,
			p:    policy.Policy{policy.Authorize{Signer: s.signer.Public(), PolicyRef: ref}},
			opts: policy.ApplyOptions{Signed: []*policy.SignedPolicy{sp}},
		}, tc{
			name: "or-of-authorize-" + s.name,
			p: policy.Policy{policy.Or{Branches: []policy.Policy{
				{policy.Authorize{Signer: s.signer.Public(), PolicyRef: ref}},
				{policy.PCR{Values: cur}},
			}}},
			opts: policy.ApplyOptions{Branches: []int{0}, Signed: []*policy.SignedPolicy{sp}},
		})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, err := c.p.Digest(tpm2.TPMAlgSHA256)
			if err != nil {
				t.Fatal(err)
			}
			got := trialDigest(t, tp, c.p, c.opts)
			if !bytes.Equal(got, want) {
				t.Fatalf("TPM trial digest %x, Policy.Digest %x", got, want)
			}
		})
	}
}

// unseal runs p in a real policy session and unseals blob with it. between,
// when set, runs after the policy and before the object is used.
func unseal(tp *tpm.TPM, srk tpm.Object, blob tpm.Blob, p policy.Policy, opts policy.ApplyOptions, between func() error) (out []byte, err error) {
	ps, err := tp.StartPolicySession(false)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := ps.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := p.Apply(ps, opts); err != nil {
		return nil, err
	}
	if between != nil {
		if err := between(); err != nil {
			return nil, err
		}
	}
	obj, err := tp.Load(srk, nil, blob)
	if err != nil {
		return nil, err
	}
	defer func() {
		if ferr := tp.Flush(obj.Handle); ferr != nil && err == nil {
			err = ferr
		}
	}()
	return tp.Unseal(obj, ps.Session())
}

func extend(t *testing.T, tp *tpm.TPM, pcr int, event string) {
	t.Helper()
	d := sha256.Sum256([]byte(event))
	if err := tp.PCRExtend(pcr, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
}

// An object sealed to PCR values unseals while they hold, and not after.
func TestTPMPCRPolicyUnseal(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	p := policy.Policy{policy.PCR{Values: currentValues(t, tp, 0, 7, 16)}}
	d, err := p.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("sealed to PCRs 0, 7 and 16")
	blob, err := tp.Seal(srk, nil, secret, d)
	if err != nil {
		t.Fatal(err)
	}

	before := tp.Stats()
	got, err := unseal(tp, srk, blob, p, policy.ApplyOptions{}, nil)
	if err != nil {
		t.Fatalf("unseal with the PCRs as sealed: %v", err)
	}
	t.Logf("PCR-policy unseal: %d TPM commands", tp.Stats().Sub(before).Commands)
	if !bytes.Equal(got, secret) {
		t.Fatalf("unsealed %q", got)
	}

	// A session with another policy does not authorize the unseal.
	_, err = unseal(tp, srk, blob, policy.Policy{policy.CommandCode{CC: tpm2.TPMCCUnseal}}, policy.ApplyOptions{}, nil)
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("unseal with another policy: %v, want ErrPolicyNotSatisfied (TPM_RC_POLICY_FAIL)", err)
	}

	// Any PCR change counted by the update counter between policy and use
	// voids the session, even of a PCR the policy does not select.
	_, err = unseal(tp, srk, blob, p, policy.ApplyOptions{}, func() error {
		extend(t, tp, 15, "between policy and use")
		return nil
	})
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCPCRChanged) {
		t.Fatalf("unseal after PCR 15 changed: %v, want ErrPolicyNotSatisfied (TPM_RC_PCR_CHANGED)", err)
	}

	// PCR 16 is exempt from the update counter: a change after PolicyPCR goes
	// unnoticed by the session. (This is why provd re-checks PCRs at use.)
	got, err = unseal(tp, srk, blob, p, policy.ApplyOptions{}, func() error {
		extend(t, tp, 16, "after PolicyPCR")
		return nil
	})
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal after PCR 16 changed behind PolicyPCR: %q, %v; swtpm used to ignore it", got, err)
	}

	// Now PCR 16 differs from the sealed value: PolicyPCR itself refuses.
	_, err = unseal(tp, srk, blob, p, policy.ApplyOptions{}, nil)
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCValue) {
		t.Fatalf("unseal after PCR 16 changed: %v, want ErrPolicyNotSatisfied (TPM_RC_VALUE)", err)
	}
	var te *tpm.Error
	if !errors.As(err, &te) || te.Command != "TPM2_PolicyPCR" {
		t.Fatalf("failure not attributed to TPM2_PolicyPCR: %v", err)
	}
}

// A signed policy of version N authorizes while the counter is <= N, is
// revoked by incrementing the counter past N, and a new signed policy (a new
// version, new PCR values) restores access without re-sealing.
func TestTPMSignedPolicyRevocationAndRollover(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	ref := []byte("provd-test")
	for i, s := range tpmSigners(t) {
		t.Run(s.name, func(t *testing.T) {
			h := counterHandle + tpm2.TPMHandle(i)
			counter := defineCounter(t, tp, h)
			authz := policy.Policy{policy.Authorize{Signer: s.signer.Public(), PolicyRef: ref}}
			d, err := authz.Digest(tpm2.TPMAlgSHA256)
			if err != nil {
				t.Fatal(err)
			}
			secret := []byte("sealed to a signer")
			blob, err := tp.Seal(srk, nil, secret, d)
			if err != nil {
				t.Fatal(err)
			}
			try := func(sps ...*policy.SignedPolicy) error {
				got, err := unseal(tp, srk, blob, authz, policy.ApplyOptions{Signed: sps}, nil)
				if err == nil && !bytes.Equal(got, secret) {
					t.Fatalf("unsealed %q", got)
				}
				return err
			}
			sign := func(vals policy.PCRValues, version uint64) *policy.SignedPolicy {
				sp, err := policy.SignPolicy(s.signer, vals, version, ref, counter)
				if err != nil {
					t.Fatal(err)
				}
				return sp
			}
			increment := func() {
				if err := tp.Increment(h); err != nil {
					t.Fatal(err)
				}
			}

			v0 := readCounter(t, tp, h)
			vals := currentValues(t, tp, 0, 7, 16)
			spN := sign(vals, v0+1)
			before := tp.Stats()
			if err := try(spN); err != nil {
				t.Fatalf("version %d with counter %d: %v", v0+1, v0, err)
			}
			t.Logf("signed-policy unseal: %d TPM commands", tp.Stats().Sub(before).Commands)
			increment() // counter = N: still allowed
			if err := try(spN); err != nil {
				t.Fatalf("version %d with counter %d: %v", v0+1, v0+1, err)
			}
			increment() // counter = N+1: revoked
			err = try(spN)
			if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCPolicy) {
				t.Fatalf("revoked version %d with counter %d: %v, want ErrPolicyNotSatisfied (TPM_RC_POLICY)", v0+1, v0+2, err)
			}

			// A newer version works again; Apply picks the highest.
			spN1 := sign(vals, v0+2)
			if err := try(spN, spN1); err != nil {
				t.Fatalf("version %d with counter %d: %v", v0+2, v0+2, err)
			}

			// The platform changes: the signed PCR values no longer hold.
			extend(t, tp, 16, "firmware update "+s.name)
			err = try(spN1)
			if !errors.Is(err, tpm.ErrPolicyNotSatisfied) || !errors.Is(err, tpm2.TPMRCValue) {
				t.Fatalf("old PCR values after the change: %v, want ErrPolicyNotSatisfied (TPM_RC_VALUE)", err)
			}
			// A policy signed for the new values restores access.
			if err := try(sign(currentValues(t, tp, 0, 7, 16), v0+2)); err != nil {
				t.Fatalf("policy signed for the new PCR values: %v", err)
			}
		})
	}
}
