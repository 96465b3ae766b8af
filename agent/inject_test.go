package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// injector is A1 on a good boot, after provisioning pinned the TPM (nothing
// of provd's is changed, no session of provd's is touched, no salt is
// redirected). It only *adds* commands of its own: when provd is about to
// use a loaded object with a secret-bearing command, it first starts its own
// (unsalted, unencrypted) policy session, replays provd's PolicyPCR
// parameters (plaintext on the bus) into it, and runs the same command on
// provd's loaded handle with its own session, reading the output in
// plaintext. Then it forwards provd's command untouched: provd sees nothing.
type injector struct {
	next transport.TPM
	on   atomic.Bool

	mu       sync.Mutex
	lastPCR  []byte // provd's last TPM2_PolicyPCR command
	stolen   map[string][]byte
	failures []error
}

func (x *injector) wrap(next transport.TPM) transport.TPM { x.next = next; return x }

// attackerDigest is a digest the attacker wants signed (e.g. a firmware image
// of its own); attackerData is data it wants MACed.
var (
	attackerDigest = sha256.Sum256([]byte("attacker's firmware image"))
	attackerData   = []byte("attacker-chosen message to MAC")
)

func (x *injector) Send(cmd []byte) ([]byte, error) {
	if !x.on.Load() || len(cmd) < 14 {
		return x.next.Send(cmd)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
	switch cc {
	case tpm2.TPMCCPolicyPCR:
		x.lastPCR = append([]byte(nil), cmd...)
	case tpm2.TPMCCUnseal, tpm2.TPMCCECDHZGen, tpm2.TPMCCSign, tpm2.TPMCCHMAC:
		if x.lastPCR != nil {
			if err := x.steal(cc, h, cmd); err != nil {
				x.failures = append(x.failures, err)
			}
		}
	}
	return x.next.Send(cmd)
}

// params returns the parameter area of a command with one handle and sessions.
func params(cmd []byte) []byte {
	return cmd[swtpmtest.ParamsOffset(cmd, 1):]
}

func (x *injector) steal(cc tpm2.TPMCC, h tpm2.TPMHandle, cmd []byte) error {
	rp, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(x.next)
	if err != nil {
		return fmt.Errorf("ReadPublic: %w", err)
	}
	s, closer, err := tpm2.PolicySession(x.next, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return fmt.Errorf("StartAuthSession: %w", err)
	}
	defer closer()
	pcr := append([]byte(nil), x.lastPCR...)
	binary.BigEndian.PutUint32(pcr[10:14], uint32(s.Handle()))
	rsp, err := x.next.Send(pcr)
	if err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return fmt.Errorf("PolicyPCR replay: %x %v", rsp, err)
	}
	key := tpm2.AuthHandle{Handle: h, Name: rp.Name, Auth: s}
	switch cc {
	case tpm2.TPMCCUnseal:
		r, err := (tpm2.Unseal{ItemHandle: key}).Execute(x.next)
		if err != nil {
			return fmt.Errorf("Unseal: %w", err)
		}
		x.stolen["unsealed"] = r.OutData.Buffer
	case tpm2.TPMCCECDHZGen:
		p := params(cmd) // inPoint: provd's session encrypts only the response
		n := int(binary.BigEndian.Uint16(p))
		pt, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](p[2 : 2+n])
		if err != nil {
			return err
		}
		r, err := (tpm2.ECDHZGen{KeyHandle: key, InPoint: tpm2.New2B(*pt)}).Execute(x.next)
		if err != nil {
			return fmt.Errorf("ECDH_ZGen: %w", err)
		}
		op, _ := r.OutPoint.Contents()
		x.stolen["ecdh Z"] = op.X.Buffer
	case tpm2.TPMCCSign:
		r, err := (tpm2.Sign{KeyHandle: key, Digest: tpm2.TPM2BDigest{Buffer: attackerDigest[:]},
			InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull}}).Execute(x.next)
		if err != nil {
			return fmt.Errorf("Sign: %w", err)
		}
		e, _ := r.Signature.Signature.ECDSA()
		x.stolen["signature r||s"] = append(append([]byte(nil), e.SignatureR.Buffer...), e.SignatureS.Buffer...)
	case tpm2.TPMCCHMAC:
		r, err := (tpm2.Hmac{Handle: key, Buffer: tpm2.TPM2BMaxBuffer{Buffer: attackerData}, HashAlg: tpm2.TPMAlgSHA256}).Execute(x.next)
		if err != nil {
			return fmt.Errorf("HMAC: %w", err)
		}
		x.stolen["hmac"] = r.OutHMAC.Buffer
	}
	return nil
}

// The interposer of the threat model ("read, drop, replay and forge every
// byte") on a good boot, after provisioning pinned the genuine TPM. It never
// touches provd's sessions; it satisfies the PK's policy P itself (PolicyPCR
// is a statement about the platform, not about the caller) and tries to use
// provd's loaded objects with sessions of its own. Found by review: before
// objects had an authValue it got the sealed secret, the ECDH shared secret,
// a signature over a digest of its choosing and an HMAC over data of its
// choosing. Now every object's policy ends in PolicyAuthValue, keyed by a
// secret only the state holds: every one of its uses fails in the TPM, and
// provd's own operations succeed.
func TestInterposerCannotUseProvdsObjects(t *testing.T) {
	x := &injector{stolen: map[string][]byte{}}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, EKCA: caBundle(t, env), Officer: officertest.Public()}); err != nil {
		t.Fatal(err)
	}
	peer := ecdhPeer(t)
	blob, secrets := keysAndSecret(ctx, t, a, peer)
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "mac", Label: "telemetry", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	env.Reopen() // a fresh process: only the state pins the TPM

	x.on.Store(true)
	for op, err := range fullSequence(ctx, t, reopen(env, dir), blob, peer, secrets["ECDH shared secret"]) {
		if err != nil {
			t.Errorf("%s with the injector on: %v (provd noticed)", op, err)
		}
	}
	a2, done, err := reopen(env, dir)()
	if err != nil {
		t.Fatal(err)
	}
	mac, err := a2.HMAC(ctx, "mac", []byte("provd's own data"))
	if err != nil {
		t.Errorf("provd's HMAC with the injector on: %v", err)
	}
	done()
	x.on.Store(false)
	x.mu.Lock()
	defer x.mu.Unlock()
	// The attack was mounted: each of its uses was refused by the TPM.
	if len(x.failures) < 4 {
		t.Errorf("only %d injected uses were refused (%v): the attack was not mounted, or some use succeeded", len(x.failures), x.failures)
	}
	for _, err := range x.failures {
		if !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCBadAuth) && !errors.Is(err, tpm2.TPMRCAuthFail) {
			t.Errorf("an injected use failed otherwise than by the TPM's authorization check: %v", err)
		}
	}
	if bytes.Equal(x.stolen["unsealed"], interposerSealed) {
		t.Errorf("the interposer unsealed provd's secret: %q", x.stolen["unsealed"])
	}
	if z := x.stolen["ecdh Z"]; z != nil && bytes.Equal(z, secrets["ECDH shared secret"]) {
		t.Errorf("the interposer computed the ECDH shared secret: %x", z)
	}
	if sig := x.stolen["signature r||s"]; sig != nil {
		a3, done, _ := reopen(env, dir)()
		pub, _, _ := a3.KeyPublic(ctx, "sig")
		done()
		var r, s = new(bigInt).SetBytes(sig[:32]), new(bigInt).SetBytes(sig[32:])
		if ecdsa.Verify(pub.(*ecdsa.PublicKey), attackerDigest[:], r, s) {
			t.Errorf("the interposer got provd's key 'sig' to sign a digest of its choice")
		}
	}
	if m := x.stolen["hmac"]; m != nil {
		t.Errorf("the interposer got an HMAC over data of its choice with derived key 'mac': %x (provd's MAC %x)", m, mac)
	}
}

type bigInt = big.Int

// seqThief is the same interposer against provd's HMAC sequences: when
// provd feeds a sequence, it first tries to complete that sequence itself
// over data of its own, authorized as an empty-auth sequence would be.
type seqThief struct {
	next  transport.TPM
	on    atomic.Bool
	tried atomic.Int32
	got   atomic.Int32
	errs  []error
	mu    sync.Mutex
}

func (x *seqThief) wrap(next transport.TPM) transport.TPM { x.next = next; return x }

func (x *seqThief) Send(cmd []byte) ([]byte, error) {
	if x.on.Load() && len(cmd) >= 14 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCSequenceUpdate {
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
		x.tried.Add(1)
		_, err := (tpm2.SequenceComplete{SequenceHandle: tpm2.AuthHandle{Handle: h, Auth: tpm2.PasswordAuth(nil)},
			Buffer: tpm2.TPM2BMaxBuffer{Buffer: attackerData}, Hierarchy: tpm2.TPMRHNull}).Execute(x.next)
		if err == nil {
			x.got.Add(1)
		} else {
			x.mu.Lock()
			x.errs = append(x.errs, err)
			x.mu.Unlock()
		}
	}
	return x.next.Send(cmd)
}

// An HMAC sequence object has a random authValue, sent encrypted, and every
// command on it an HMAC session keyed by it: the interposer cannot complete
// provd's sequence over data of its own (found by review: with an empty
// authValue anyone on the bus could feed or complete it).
func TestInterposerCannotUseProvdsHMACSequence(t *testing.T) {
	x := &seqThief{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 3000) // the sequence path
	want, err := a.HMAC(ctx, "mac", data)
	if err != nil {
		t.Fatal(err)
	}
	x.on.Store(true)
	got, err := a.HMAC(ctx, "mac", data)
	x.on.Store(false)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("provd's HMAC with the thief on: %x %v, want %x", got, err, want)
	}
	if x.tried.Load() == 0 || x.got.Load() != 0 {
		t.Fatalf("the thief tried %d times and completed %d sequences (%v)", x.tried.Load(), x.got.Load(), x.errs)
	}
	for _, err := range x.errs {
		if !errors.Is(err, tpm2.TPMRCBadAuth) && !errors.Is(err, tpm2.TPMRCAuthFail) && !errors.Is(err, tpm2.TPMRCAuthUnavailable) {
			t.Errorf("the thief failed otherwise than by authorization: %v", err)
		}
	}
}
