package fwhook_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// fixture is one device with a firmware tree, its firmware signer and the
// fleet's crypto officer.
type fixture struct {
	env     *swtpmtest.Env
	dir     string
	images  string
	officer *ecdsa.PrivateKey
	signer  *ecdsa.PrivateKey
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{env: swtpmtest.Start(t), dir: t.TempDir(), officer: newKey(t), signer: newKey(t)}
	f.images = filepath.Join(f.dir, "images")
	for name, b := range map[string][]byte{"boot.bin": bytes.Repeat([]byte{1}, 70000), "efi/app.efi": []byte("app")} {
		p := filepath.Join(f.images, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) authPath() string { return filepath.Join(f.dir, fwhook.CommitAuthName) }
func (f *fixture) logPath() string  { return filepath.Join(f.dir, fwhook.LogName) }

// pin authenticates the TPM connection as fw anchor set does before a set
// (here by pinning the SRK the TPM reports, the harness's TPM being the
// real one): Set refuses an unauthenticated connection.
func (f *fixture) pin(t *testing.T) {
	t.Helper()
	if f.env.TPM.PinnedSRKName() != nil {
		return
	}
	srk, err := f.env.TPM.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.env.TPM.PinSRK(srk.Public); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) set(t *testing.T, signer, next crypto.PublicKey) fwhook.Info {
	t.Helper()
	f.pin(t)
	in, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: signer, Next: next, Class: "gateway", CommitAuthPath: f.authPath()})
	if err != nil {
		t.Fatalf("anchor set: %v", err)
	}
	return in
}

func (f *fixture) manifest(t *testing.T, k crypto.Signer, version uint64, class string) []byte {
	t.Helper()
	list, err := firmware.HashImages(f.images, "sha256")
	if err != nil {
		t.Fatal(err)
	}
	b, err := firmware.Sign(k, firmware.Manifest{Class: class, Version: version, Images: list})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) verify(m []byte, commit bool) (fwhook.Result, error) {
	return f.verifyContext(context.Background(), m, commit)
}

func (f *fixture) verifyContext(ctx context.Context, m []byte, commit bool) (fwhook.Result, error) {
	return fwhook.VerifyContext(ctx, f.env.TPM, fwhook.VerifyRequest{Manifest: m, Root: f.images, PCR: fwhook.DefaultPCR,
		LogPath: f.logPath(), Commit: commit, CommitAuthPath: f.authPath()})
}

func (f *fixture) pcr(t *testing.T) []byte {
	t.Helper()
	v, err := f.env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{fwhook.DefaultPCR})
	if err != nil {
		t.Fatal(err)
	}
	return v[fwhook.DefaultPCR]
}

// reboot restarts the TPM as a power cycle: PCRs back to their reset values.
func (f *fixture) reboot() { f.env.Restart(false) }

func extend(pcr, d []byte) []byte {
	h := sha256.New()
	h.Write(pcr)
	h.Write(d)
	return h.Sum(nil)
}

// good is the PCR value a good verification of m leaves after reset.
func (f *fixture) good(t *testing.T, m []byte) []byte {
	t.Helper()
	s, err := firmware.Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	return attest.GoodPCR(crypto.SHA256, mustName(t, f.officer.Public()), s.Manifest.Class, s.Payload)
}

func payloadDigest(t *testing.T, m []byte) []byte {
	t.Helper()
	s, err := firmware.Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	return s.Digest()
}

var failed = func() []byte {
	d := sha256.Sum256([]byte("provd firmware verification failed\x00"))
	return extend(make([]byte, 32), d[:])
}()

// replayed is PCR 12 as the measurement log accounts for it.
func (f *fixture) replayed(t *testing.T) []byte {
	t.Helper()
	l, err := fwhook.ReadLogFile(f.logPath())
	if err != nil {
		t.Fatal(err)
	}
	v, err := l.Replay(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return v[tpm2.TPMAlgSHA256][fwhook.DefaultPCR]
}

// TestVerifyGood: good firmware verifies; PCR 12 holds the extend of the
// manifest's digest, which the test recomputes by hand and from the log;
// the log's event says what was verified.
func TestVerifyGood(t *testing.T) {
	f := newFixture(t)
	in := f.set(t, f.signer.Public(), nil)
	if in.Class != "gateway" || in.Lowest != 0 || in.Next != nil {
		t.Fatalf("anchor: %+v", in)
	}
	m := f.manifest(t, f.signer, 3, "gateway")
	res, err := f.verify(m, false)
	if err != nil || !res.OK || res.Event != "verified" {
		t.Fatalf("verify: %+v, %v", res, err)
	}
	want := f.good(t, m)
	if got := f.pcr(t); !bytes.Equal(got, want) || !bytes.Equal(f.replayed(t), want) {
		t.Fatalf("PCR 12 %x, log replays %x, want %x", got, f.replayed(t), want)
	}
	l, err := fwhook.ReadLogFile(f.logPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) != 1 {
		t.Fatalf("log: %d events, want the verdict's", len(l.Events))
	}
	for _, e := range l.Events {
		if e.PCR != 12 || e.Type != attest.EVEventTag || attest.ProvdEventText(e) == "" || attest.CheckProvdEvent(e) != nil {
			t.Fatalf("event %+v: %v", e, attest.CheckProvdEvent(e))
		}
	}
	// A second run in the same boot appends; the log still accounts for the PCR.
	if _, err := f.verify(m, false); err != nil {
		t.Fatal(err)
	}
	if got := f.pcr(t); !bytes.Equal(got, f.replayed(t)) || bytes.Equal(got, want) {
		t.Fatalf("after a second run: PCR %x, log %x", got, f.replayed(t))
	}
	// A new boot starts a new log.
	f.reboot()
	if _, err := f.verify(m, false); err != nil {
		t.Fatal(err)
	}
	if got := f.pcr(t); !bytes.Equal(got, want) || !bytes.Equal(f.replayed(t), want) {
		t.Fatalf("after reboot: PCR %x, log %x, want %x", got, f.replayed(t), want)
	}
}

// TestVerifyFailures: each bad case is its own error (exit code) and
// leaves PCR 12 in the one "failed" state, which the log accounts for.
func TestVerifyFailures(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	good := f.manifest(t, f.signer, 5, "gateway")
	if _, err := f.verify(good, true); err != nil {
		t.Fatal(err)
	}
	other := newKey(t)
	cases := []struct {
		name  string
		setup func(t *testing.T) []byte
		undo  func(t *testing.T)
		want  error
	}{
		{"wrong signer", func(t *testing.T) []byte { return f.manifest(t, other, 5, "gateway") }, nil, firmware.ErrBadSignature},
		{"another class", func(t *testing.T) []byte { return f.manifest(t, f.signer, 5, "camera") }, nil, firmware.ErrBadSignature},
		{"tampered image", func(t *testing.T) []byte {
			writeFile(t, filepath.Join(f.images, "efi/app.efi"), []byte("apq"))
			return good
		}, func(t *testing.T) { writeFile(t, filepath.Join(f.images, "efi/app.efi"), []byte("app")) }, firmware.ErrDigest},
		{"missing image", func(t *testing.T) []byte {
			if err := os.Rename(filepath.Join(f.images, "boot.bin"), filepath.Join(f.dir, "boot.bin")); err != nil {
				t.Fatal(err)
			}
			return good
		}, func(t *testing.T) {
			if err := os.Rename(filepath.Join(f.dir, "boot.bin"), filepath.Join(f.images, "boot.bin")); err != nil {
				t.Fatal(err)
			}
		}, firmware.ErrMissingImage},
		{"rolled back", func(t *testing.T) []byte { return f.manifest(t, f.signer, 4, "gateway") }, nil, firmware.ErrRollback},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f.reboot()
			m := c.setup(t)
			res, err := f.verify(m, false)
			if !errors.Is(err, c.want) || res.OK || res.Event != "failed" {
				t.Fatalf("verify: %+v, %v; want %v", res, err, c.want)
			}
			if got := f.pcr(t); !bytes.Equal(got, failed) || !bytes.Equal(f.replayed(t), failed) {
				t.Fatalf("PCR 12 %x, log %x, want the failed state %x", got, f.replayed(t), failed)
			}
			if c.undo != nil {
				c.undo(t)
			}
			// A good run after a failure in the same boot does not reach
			// the good value.
			if _, err := f.verify(good, false); err != nil {
				t.Fatal(err)
			}
			if got := f.pcr(t); bytes.Equal(got, f.good(t, good)) {
				t.Fatal("a failure then a success reads as a good boot")
			}
		})
	}
	t.Run("no anchor", func(t *testing.T) {
		f.reboot()
		if err := f.env.TPM.UndefineNV(fwhook.AnchorHandle); err != nil {
			t.Fatal(err)
		}
		res, err := f.verify(good, false)
		if !errors.Is(err, firmware.ErrNoAnchor) || res.OK {
			t.Fatalf("verify: %+v, %v", res, err)
		}
		if got := f.pcr(t); !bytes.Equal(got, failed) {
			t.Fatalf("PCR 12 %x, want failed", got)
		}
	})
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCommit: after --commit of version N, N-1 is refused; a commit never
// lowers the counter; a verify without --commit leaves it.
func TestCommit(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	v3, v7 := f.manifest(t, f.signer, 3, "gateway"), f.manifest(t, f.signer, 7, "gateway")
	if res, err := f.verify(v7, false); err != nil || res.Committed || res.Lowest != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if res, err := f.verify(v3, true); err != nil || !res.Committed || res.Lowest != 3 {
		t.Fatalf("commit 3: %+v %v", res, err)
	}
	if res, err := f.verify(v7, true); err != nil || res.Lowest != 7 {
		t.Fatalf("commit 7: %+v %v", res, err)
	}
	f.reboot()
	if _, err := f.verify(v3, true); !errors.Is(err, firmware.ErrRollback) {
		t.Fatalf("version 3 after commit of 7: %v", err)
	}
	in, err := fwhook.Read(f.env.TPM)
	if err != nil || in.Lowest != 7 {
		t.Fatalf("%+v %v", in, err)
	}
	// The officer's next set keeps the floor, even when the counter's
	// authorization was deleted (a new counter is defined under it), and
	// refuses to lower it.
	if err := os.Remove(f.authPath()); err != nil {
		t.Fatal(err)
	}
	if in := f.set(t, f.signer.Public(), nil); in.Lowest != 7 {
		t.Fatalf("after a new counter: lowest %d, want 7", in.Lowest)
	}
	three := uint64(3)
	f.pin(t)
	if _, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath(), Lowest: &three}); err == nil {
		t.Fatal("a set lowered the floor")
	}
	// An attacker removes the anchor: the officer's next set does not
	// quietly start over at 0; it needs the floor said.
	if err := f.env.TPM.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	if _, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath()}); !errors.Is(err, firmware.ErrAnchorUntrusted) {
		t.Fatalf("set after the anchor was removed, no floor given: %v", err)
	}
	seven := uint64(7)
	if in, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath(), Lowest: &seven}); err != nil || in.Lowest != 7 {
		t.Fatalf("set with the floor said: %+v %v", in, err)
	}
	// Rotation keeps the lowest accepted version.
	next := newKey(t)
	if in := f.set(t, f.signer.Public(), next.Public()); in.Lowest != 7 || in.Next == nil {
		t.Fatalf("after rotation: %+v", in)
	}
	if _, err := f.verify(f.manifest(t, next, 8, "gateway"), false); err != nil {
		t.Fatalf("next signer during rotation: %v", err)
	}
}

// TestSealedToGoodBoot: a secret sealed to PCR 12's good value unseals only
// after a good verification in this boot.
func TestSealedToGoodBoot(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	good := f.manifest(t, f.signer, 1, "gateway")
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{12: f.good(t, good)}}
	pol := policy.Policy{policy.PCR{Values: vals}}
	digest, err := pol.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	srk, err := f.env.TPM.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := f.env.TPM.Seal(srk, nil, []byte("disk key"), digest)
	if err != nil {
		t.Fatal(err)
	}
	unseal := func() ([]byte, error) {
		tp := f.env.TPM
		srk, err := tp.SRK()
		if err != nil {
			return nil, err
		}
		obj, err := tp.Load(srk, nil, blob)
		if err != nil {
			return nil, err
		}
		defer tp.Flush(obj.Handle)
		s, err := tp.StartPolicySession(false)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		if err := pol.Apply(s, policy.ApplyOptions{}); err != nil {
			return nil, err
		}
		return tp.Unseal(obj, s.Session())
	}
	if _, err := unseal(); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("before verify: %v", err)
	}
	writeFile(t, filepath.Join(f.images, "boot.bin"), []byte("evil"))
	if _, err := f.verify(good, false); !errors.Is(err, firmware.ErrDigest) {
		t.Fatal(err)
	}
	if _, err := unseal(); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("after a tampered boot: %v", err)
	}
	// Evil firmware signed by someone else, then the good manifest's
	// digest extended by hand, cannot reach the good value either.
	f.reboot()
	if _, err := f.verify(f.manifest(t, newKey(t), 1, "gateway"), false); !errors.Is(err, firmware.ErrBadSignature) {
		t.Fatal(err)
	}
	if err := f.env.TPM.PCRExtend(12, tpm2.TPMAlgSHA256, payloadDigest(t, good)); err != nil {
		t.Fatal(err)
	}
	if _, err := unseal(); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("after a failed boot and a hand extend: %v", err)
	}
	f.reboot()
	writeFile(t, filepath.Join(f.images, "boot.bin"), bytes.Repeat([]byte{1}, 70000))
	if _, err := f.verify(good, false); err != nil {
		t.Fatal(err)
	}
	got, err := unseal()
	if err != nil || string(got) != "disk key" {
		t.Fatalf("after a good boot: %q, %v", got, err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVerdictOrderWithHashing: the images are hashed while the TPM reads
// the counter (issue 14); when two checks fail, the one reported is the
// first in the documented order, as when they ran one after another.
func TestVerdictOrderWithHashing(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	if _, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), true); err != nil {
		t.Fatal(err)
	}
	other := newKey(t)
	app := filepath.Join(f.images, "efi/app.efi")
	tamper := func(t *testing.T) {
		writeFile(t, app, []byte("apq"))
		t.Cleanup(func() { writeFile(t, app, []byte("app")) })
	}
	for _, c := range []struct {
		name string
		m    func(t *testing.T) []byte
		want error
	}{
		{"wrong signer and a tampered image", func(t *testing.T) []byte { m := f.manifest(t, other, 5, "gateway"); tamper(t); return m }, firmware.ErrBadSignature},
		{"another class and a tampered image", func(t *testing.T) []byte { m := f.manifest(t, f.signer, 5, "camera"); tamper(t); return m }, firmware.ErrBadSignature},
		{"a tampered image and rolled back", func(t *testing.T) []byte { m := f.manifest(t, f.signer, 4, "gateway"); tamper(t); return m }, firmware.ErrDigest},
		{"a malformed manifest and a tampered image", func(t *testing.T) []byte { tamper(t); return []byte("{") }, firmware.ErrBadManifest},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.reboot()
			if _, err := f.verify(c.m(t), false); !errors.Is(err, c.want) {
				t.Fatalf("verify: %v, want %v", err, c.want)
			}
			if got := f.pcr(t); !bytes.Equal(got, failed) {
				t.Fatalf("PCR 12 %x, want the failed state", got)
			}
		})
	}
	t.Run("no anchor and a tampered image", func(t *testing.T) {
		f.reboot()
		tamper(t)
		if err := f.env.TPM.UndefineNV(fwhook.AnchorHandle); err != nil {
			t.Fatal(err)
		}
		if _, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), false); !errors.Is(err, firmware.ErrNoAnchor) {
			t.Fatalf("verify: %v", err)
		}
	})
}

// TestRefusedManifestIsNotHashed: only a manifest the anchor accepts (its
// signer, its class) has its images read (found by review: hashed while
// the anchor was read, a manifest signed by anyone could hold the verdict
// on a stalled read of an image it names); the hashing has ended when
// Verify returns, whatever it returns.
func TestRefusedManifestIsNotHashed(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	if _, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), true); err != nil {
		t.Fatal(err)
	}
	var hashed []uint64
	restore := fwhook.SetVerifyImages(func(ctx context.Context, m firmware.Manifest, root string) error {
		hashed = append(hashed, m.Version)
		return m.VerifyImages(ctx, root)
	})
	defer restore()
	other := newKey(t)
	for _, c := range []struct {
		name string
		m    []byte
		want error
		hash bool
	}{
		{"another signer", f.manifest(t, other, 6, "gateway"), firmware.ErrBadSignature, false},
		{"another class", f.manifest(t, f.signer, 7, "camera"), firmware.ErrBadSignature, false},
		{"malformed", []byte("{"), firmware.ErrBadManifest, false},
		{"rolled back", f.manifest(t, f.signer, 4, "gateway"), firmware.ErrRollback, true},
		{"good", f.manifest(t, f.signer, 5, "gateway"), nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			hashed = nil
			before := runtime.NumGoroutine()
			if _, err := f.verify(c.m, false); !errors.Is(err, c.want) {
				t.Fatalf("verify: %v, want %v", err, c.want)
			}
			if after := runtime.NumGoroutine(); after > before {
				t.Fatalf("%d goroutines after Verify returned, %d before: the hashing outlived the verdict", after, before)
			}
			if (len(hashed) == 1) != c.hash || len(hashed) > 1 {
				t.Fatalf("images hashed %d times, want hashed: %v", len(hashed), c.hash)
			}
		})
	}
	t.Run("no anchor", func(t *testing.T) {
		hashed = nil
		if err := f.env.TPM.UndefineNV(fwhook.AnchorHandle); err != nil {
			t.Fatal(err)
		}
		if _, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), false); !errors.Is(err, firmware.ErrNoAnchor) || len(hashed) != 0 {
			t.Fatalf("verify: %v, images hashed %d times", err, len(hashed))
		}
	})
}
