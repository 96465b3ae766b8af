package agent

// Attacks on issue 14's transfer changes (from their adversarial review):
// the duplication branch's own policy session encrypting TPM2_Duplicate's
// inner key (secretIn), TPM2_Import and its proving load in one salted
// session (tpm.ImportAndLoad), and activation against an EK with an
// authValue.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// replaceEKWithAuth puts at the RSA EK's persistent handle the same key (the
// endorsement seed and the L-1 template give it; its name is the same, and
// the certificate still matches) with authValue auth: what anyone holding
// the owner and endorsement authorizations (empty by default: root on a
// good boot, A4) can do.
func replaceEKWithAuth(t *testing.T, env *swtpmtest.Env, auth []byte) {
	t.Helper()
	tp := env.TPM
	old, err := tp.ReadPublic(tpm.RSAEKHandle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: old.Named(), PersistentHandle: tpm.RSAEKHandle}).Execute(tp); err != nil {
		t.Fatalf("evict the EK: %v", err)
	}
	tmpl := tpm2.RSAEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
	rsp, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}}},
		InPublic:      tpm2.New2B(tmpl),
	}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(rsp.ObjectHandle)
	if !bytes.Equal(rsp.Name.Buffer, old.Name.Buffer) {
		t.Fatalf("the new EK is named %x, the old %x", rsp.Name.Buffer, old.Name.Buffer)
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, PersistentHandle: tpm.RSAEKHandle}).Execute(tp); err != nil {
		t.Fatalf("persist the EK: %v", err)
	}
}

// TestDupImportEKWithAuthValue: B's EK, the same key at the same handle
// with the same certificate, given a non-empty authValue (anyone holding
// the owner and endorsement authorizations can: root on a good boot, A4).
// A genuine duplicate still imports: the activation's secret comes back in
// an encryption session of its own, whose key is the salt's alone. (Found
// by review when the EK's policy session encrypted it: the TPM keyed that
// with the EK's authValue, the secret came back garbled and the import
// failed with TPM_RC_SIZE.)
func TestDupImportEKWithAuthValue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envB, b, _, _, dup := movedKey(t)
	replaceEKWithAuth(t, envB, []byte("an EK authValue"))
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("a genuine duplicate to a genuine EK (its authValue set, the key and certificate unchanged): exit %d: %v", api.ExitCode(err), err)
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := b.Sign(ctx, "k", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the imported key does not sign: %v", err)
	}
}

// onceHook is a hook that acts (fn) on the first command for which
// match says so, and passes everything else on.
type onceHook struct {
	mu    sync.Mutex
	state int // what the matcher has seen
	done  bool
	match func(r *onceHook, cc tpm2.TPMCC) bool
	fn    func(next transport.TPM, cmd []byte) ([]byte, error)
}

func (r *onceHook) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done || !r.match(r, swtpmtest.CommandCode(cmd)) {
		return nil, nil, false
	}
	r.done = true
	rsp, err := r.fn(next, cmd)
	return rsp, err, true
}

func (r *onceHook) fired() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.done }

// afterImport matches the nth (1-based) command cc after the TPM2_Import.
func afterImport(cc tpm2.TPMCC, nth int) func(r *onceHook, c tpm2.TPMCC) bool {
	seen := 0
	return func(r *onceHook, c tpm2.TPMCC) bool {
		if c == tpm2.TPMCCImport {
			r.state = 1
			return false
		}
		if r.state == 1 && c == cc {
			seen++
			return seen == nth
		}
		return false
	}
}

func isCC(cc tpm2.TPMCC) func(r *onceHook, c tpm2.TPMCC) bool {
	return func(_ *onceHook, c tpm2.TPMCC) bool { return c == cc }
}

// TestDupImportUnderA1: A1 on B's bus during dup import, on TPM2_Import
// and its proving TPM2_Load in one session (ImportAndLoad) and the
// activation's encryption session. Each attempt is refused or imports the
// genuine key; nothing is left loaded after the operation (its sweep
// included); the key is stored only when the import succeeded; the lockout
// counter (the EK is DA-protected) stays 0; the genuine file imports after.
func TestDupImportUnderA1(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	rec := &swtpmtest.Recorder{}
	envB, b, _, _, dup := movedKey(t, swtpmtest.WithRecorder(rec), swtpmtest.WithBus(bus))
	cases := []struct {
		name   string
		match  func(r *onceHook, c tpm2.TPMCC) bool
		fn     func(next transport.TPM, cmd []byte) ([]byte, error)
		forged bool // a command changed on its way: refused as forged (exit 15)
	}{
		// Refused by the TPM. In the operation's shared session the
		// refusal is probed: the nonces did not move, so it cannot be told
		// from a transfer key's value changed in the state directory, and
		// is exit 11 (a wrong value, or a command changed on the bus:
		// review 2 found the state's value reported forged).
		{"Import: its session's decrypt attribute cleared (the inner key in the clear)", isCC(tpm2.TPMCCImport),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				cmd = bytes.Clone(cmd)
				cmd[swtpmtest.SessionAttrOffset(cmd, 1, 0)] &^= 0x20
				return next.Send(cmd)
			}, false},
		{"Import: a byte of the answer's outPrivate changed", isCC(tpm2.TPMCCImport),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				rsp, err := next.Send(cmd)
				if err == nil && len(rsp) > 20 {
					rsp = bytes.Clone(rsp)
					rsp[20] ^= 1
				}
				return rsp, err
			}, false},
		{"ActivateCredential: the encryption session's encrypt attribute cleared", isCC(tpm2.TPMCCActivateCredential),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				cmd = bytes.Clone(cmd)
				cmd[swtpmtest.SessionAttrOffset(cmd, 2, 2)] &^= 0x40
				return next.Send(cmd)
			}, true},
		{"ActivateCredential: answered, then its last byte changed", isCC(tpm2.TPMCCActivateCredential),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				rsp, err := next.Send(cmd)
				if err == nil {
					rsp = bytes.Clone(rsp)
					rsp[len(rsp)-1] ^= 1
				}
				return rsp, err
			}, false},
		{"the proving Load: run, its answer a forged error", afterImport(tpm2.TPMCCLoad, 1),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				_, _ = next.Send(cmd)
				return swtpmtest.ErrorAnswer(0x9a2), nil // TPM_RC_BAD_AUTH, session 1
			}, false},
		{"the proving Load: run, its answer lost", afterImport(tpm2.TPMCCLoad, 1),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				_, _ = next.Send(cmd)
				return nil, errors.New("answer lost on the bus")
			}, false},
		{"the proving Load: continueSession cleared in the answer", afterImport(tpm2.TPMCCLoad, 1),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				rsp, err := next.Send(cmd)
				if err == nil && len(rsp) > 12 {
					// handle, parameterSize, parameters, then the
					// session: nonce, attributes, hmac.
					rsp = bytes.Clone(rsp)
					ps := int(binary.BigEndian.Uint32(rsp[14:18]))
					off := 18 + ps
					off += 2 + int(binary.BigEndian.Uint16(rsp[off:]))
					rsp[off] &^= 0x01
				}
				return rsp, err
			}, false},
		{"the session's flush: run, a forged error", afterImport(tpm2.TPMCCFlushContext, 1),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				_, _ = next.Send(cmd)
				return swtpmtest.ErrorAnswer(0x18b), nil // TPM_RC_HANDLE (handle 1)
			}, false},
		{"the session's flush: dropped, a forged error", afterImport(tpm2.TPMCCFlushContext, 1),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				return swtpmtest.ErrorAnswer(0x18b), nil // TPM_RC_HANDLE (handle 1), the flush never sent
			}, false},
		{"the proving Load: its handle renamed to its parent's (T)", afterImport(tpm2.TPMCCLoad, 1),
			func(next transport.TPM, cmd []byte) ([]byte, error) {
				rsp, err := next.Send(cmd)
				if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
					rsp = bytes.Clone(rsp)
					copy(rsp[10:14], cmd[10:14])
				}
				return rsp, err
			}, false},
	}
	imported := false
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := &onceHook{match: c.match, fn: c.fn}
			bus.Set(h.hook)
			name := fmt.Sprintf("k%d", i)
			_, err := b.DupImport(ctx, api.DupImportRequest{Name: name, Dup: dup})
			bus.Set(nil)
			if !h.fired() {
				t.Fatal("the attack was not mounted")
			}
			t.Logf("dup import through A1: exit %d: %.200v", api.ExitCode(err), err)
			if c.forged && api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("a command changed on the bus: exit %d, want %d (forged): %v", api.ExitCode(err), api.ExitIdentity, err)
			}
			left, lerr := envB.TPM.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, h := range left {
				if slices.Contains(b.keys.Handles(), h) {
					continue
				}
				t.Errorf("0x%08x left in the TPM after the operation, held by nobody", uint32(h))
				_ = envB.TPM.Flush(h)
			}
			ks, kerr := b.readKeyState(ctx, name, false)
			stored := kerr == nil && ks.rec.Name == name
			if err != nil && stored {
				t.Errorf("the import failed (%v) and the key is stored", err)
			}
			if err == nil {
				imported = true
				d := sha256.Sum256([]byte("m"))
				if _, err := b.Sign(ctx, name, d[:], api.SignOptions{}); err != nil {
					t.Errorf("the imported key does not sign: %v", err)
				}
				// The device holds it now: the next case's import of the
				// same file would be refused before any TPM command.
				if err := b.DeleteKey(ctx, name); err != nil {
					t.Fatal(err)
				}
				imported = false
			}
		})
	}
	info, err := envB.TPM.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Lockout.Counter != 0 {
		t.Errorf("the lockout counter is %d", info.Lockout.Counter)
	}
	if !imported {
		if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
			t.Fatalf("the genuine file after A1: %v", err)
		}
	}
	if _, err := b.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// TestDupExportDecryptBitCleared: A1 on A's bus clears the decrypt
// attribute of TPM2_Duplicate's only session (the duplication branch's
// policy session, which now carries the inner wrapper key): the TPM
// would take the ciphertext A1 saw as the inner key. The command HMAC
// (salt and authValue) covers the attributes: refused, no .dup, nothing
// left, no lockout count; the same for key export (ExportSensitive).
func TestDupExportDecryptBitCleared(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	envA := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	envB := swtpmtest.Start(t)
	a, _, peer := senderAndPeer(t, envA, envB)
	for _, mask := range []byte{0x20, 0x21, 0x60} {
		h := &onceHook{match: isCC(tpm2.TPMCCDuplicate), fn: func(next transport.TPM, cmd []byte) ([]byte, error) {
			cmd = bytes.Clone(cmd)
			cmd[swtpmtest.SessionAttrOffset(cmd, 2, 0)] ^= mask
			return next.Send(cmd)
		}}
		bus.Set(h.hook)
		_, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
		bus.Set(nil)
		if !h.fired() {
			t.Fatal("not mounted")
		}
		t.Logf("attrs ^%#x: %v", mask, err)
		if err == nil {
			t.Errorf("a duplicate made with the session's attributes changed (^%#x)", mask)
		}
		left, err := envA.TPM.Leftovers()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range left {
			if !slices.Contains(a.keys.Handles(), h) {
				t.Errorf("0x%08x left, not held by provd's key cache", uint32(h))
			}
		}
	}
	info, err := envA.TPM.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Lockout.Counter != 0 {
		t.Errorf("the lockout counter is %d", info.Lockout.Counter)
	}
	if _, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)}); err != nil {
		t.Fatalf("the genuine export after: %v", err)
	}
}
