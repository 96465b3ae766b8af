package fwhook_test

// Attacks an adversarial review of the boot hook found, kept as tests: each
// broke the hook before its fix.

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// TestImitationCannotReachGoodValue: with the empty owner authorization
// another process replaces the anchor by one naming its own officer but
// the genuine signer and class, with the floor at 0. An old genuine release
// then passes the hook (the limit docs/firmware.md states), but the PCR
// does not reach that release's good value under the genuine officer: the
// anchor's measurement comes first (found by review: it did, when only the
// manifest was measured).
func TestImitationCannotReachGoodValue(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	v1, v5 := f.manifest(t, f.signer, 1, "gateway"), f.manifest(t, f.signer, 5, "gateway")
	if res, err := f.verify(v5, true); err != nil || res.Lowest != 5 {
		t.Fatalf("commit v5: %+v %v", res, err)
	}
	tp := f.env.TPM
	if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	zero := uint64(0)
	if _, err := fwhook.Set(tp, fwhook.SetRequest{Officer: newKey(t), Signer: f.signer.Public(), Class: "gateway",
		CommitAuthPath: filepath.Join(t.TempDir(), "attacker.auth"), Lowest: &zero, Unauthenticated: true}); err != nil {
		t.Fatal(err)
	}
	f.reboot()
	res, err := f.verify(v1, false)
	if err != nil || !res.OK {
		t.Fatalf("the imitation's verdict: %+v %v (docs/firmware.md says it passes)", res, err)
	}
	if bytes.Equal(f.pcr(t), f.good(t, v1)) {
		t.Fatal("an imitation anchor let an old release reach its good value")
	}
}

// interposer rewrites the counter's NV_Read answer during a set to equal
// the anchor's base (the floor read as 0), recomputing the response HMAC
// as it can for an unsalted session.
type interposer struct {
	next   transport.TPM
	active atomic.Bool
	base   []byte
	faked  atomic.Int32
}

func (p *interposer) Send(cmd []byte) ([]byte, error) {
	rsp, err := p.next.Send(cmd)
	if err != nil || len(cmd) < 18 || binary.BigEndian.Uint32(cmd[6:]) != uint32(tpm2.TPMCCNVRead) ||
		len(rsp) < 16 || binary.BigEndian.Uint32(rsp[6:]) != 0 {
		return rsp, err
	}
	idx := binary.BigEndian.Uint32(cmd[14:])
	paramSize := int(binary.BigEndian.Uint32(rsp[10:]))
	params := rsp[14 : 14+paramSize]
	data := params[2 : 2+int(binary.BigEndian.Uint16(params))]
	switch {
	case idx == uint32(fwhook.AnchorHandle) && len(data) == fwhook.AnchorSize:
		p.base = bytes.Clone(data[len(data)-8:])
	case idx == uint32(fwhook.CounterHandle) && len(data) == 8 && p.active.Load() && p.base != nil:
		copy(data, p.base)
		off := 10 + 8 + 4 + 4
		nonceCaller := cmd[off+2 : off+2+int(binary.BigEndian.Uint16(cmd[off:]))]
		ra := rsp[14+paramSize:]
		nt := int(binary.BigEndian.Uint16(ra))
		rp := sha256.New()
		rp.Write([]byte{0, 0, 0, 0})
		rp.Write(cmd[6:10])
		rp.Write(params)
		m := hmac.New(sha256.New, nil)
		m.Write(rp.Sum(nil))
		m.Write(ra[2 : 2+nt])
		m.Write(nonceCaller)
		m.Write([]byte{ra[2+nt]})
		if sum := m.Sum(nil); len(sum) == int(binary.BigEndian.Uint16(ra[3+nt:])) {
			copy(ra[5+nt:], sum)
		}
		p.faked.Add(1)
	}
	return rsp, err
}

// TestInterposerAtSetIsCaught: a bus interposer during the officer's
// rotation forges the counter's value so that the floor would read 0 (found
// by review: the officer then signed a floor of 0, and version 1 verified
// after a commit of 5). With the TPM authenticated first, the forged answer
// fails the salted session's HMAC, nothing is written, the floor stays.
func TestInterposerAtSetIsCaught(t *testing.T) {
	ip := &interposer{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(n transport.TPM) transport.TPM { ip.next = n; return ip }))
	f := &fixture{env: env, dir: t.TempDir(), officer: newKey(t), signer: newKey(t)}
	f.images = filepath.Join(f.dir, "images")
	if err := os.MkdirAll(f.images, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.images, "boot.bin"), []byte("boot"))
	f.set(t, f.signer.Public(), nil)
	if res, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), true); err != nil || res.Lowest != 5 {
		t.Fatalf("commit v5: %+v %v", res, err)
	}
	ip.active.Store(true)
	_, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Next: newKey(t).Public(), Class: "gateway", CommitAuthPath: f.authPath()})
	ip.active.Store(false)
	if !errors.Is(err, tpm.ErrResponseForged) || ip.faked.Load() == 0 {
		t.Fatalf("set under a forging interposer: %v (forged %d answers)", err, ip.faked.Load())
	}
	in, err := fwhook.Read(f.env.TPM)
	if err != nil || in.Lowest != 5 || in.Next != nil {
		t.Fatalf("the anchor after: %+v %v", in, err)
	}
	// Unauthenticated, the set is refused before anything is read.
	f.reboot()
	if _, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath()}); err == nil {
		t.Fatal("a set on an unauthenticated TPM connection")
	}
}

// TestPCRChoice: the hook extends only 8..15: 16 and 23 are reset by
// anyone at locality 0, which would undo a failed measurement (found by
// review), and 0..7 are the firmware's.
func TestPCRChoice(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	m := f.manifest(t, f.signer, 1, "gateway")
	for _, pcr := range []int{7, 16, 23} {
		before, _ := f.env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{pcr})
		if _, err := fwhook.Verify(f.env.TPM, fwhook.VerifyRequest{Manifest: m, Root: f.images, PCR: pcr, LogPath: f.logPath()}); err == nil {
			t.Fatalf("PCR %d accepted", pcr)
		}
		after, _ := f.env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{pcr})
		if !bytes.Equal(before[pcr], after[pcr]) {
			t.Fatalf("PCR %d extended", pcr)
		}
	}
}

// TestAnchorWithAuthValue: an anchor of provd's exact shape with an
// authValue (not part of an NV name) is an untrusted anchor, exit 22 (found
// by review: it was a TPM failure, exit 9).
func TestAnchorWithAuthValue(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	tp := f.env.TPM
	if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	evil := newKey(t)
	pub, err := fwhook.AnchorPublic(mustName(t, evil.Public()), false)
	if err != nil {
		t.Fatal(err)
	}
	x, err := tp.DefineNVAuth(pub, []byte("not empty"), nil)
	if err != nil {
		t.Fatal(err)
	}
	content, _ := fwhook.Anchor{Officer: mustName(t, evil.Public()), Class: "gateway", Current: mustName(t, f.signer.Public())}.Marshal()
	evilPub, _ := policy.SignerPublic(evil.Public())
	if err := tp.NVWriteSigned(x, content, evilPub, fwhook.AnchorRef, func(d []byte) (tpm2.TPMTSignature, error) { return policy.SignDigest(evil, d) }); err != nil {
		t.Fatal(err)
	}
	f.reboot()
	if _, err := f.verify(f.manifest(t, f.signer, 1, "gateway"), false); !errors.Is(err, firmware.ErrAnchorUntrusted) || !bytes.Equal(f.pcr(t), failed) {
		t.Fatalf("verify: %v, PCR %x", err, f.pcr(t))
	}
}

// hider answers TPM2_NV_ReadPublic of the anchor and the counter with
// TPM_RC_HANDLE (parameter 1: "no such index") a given number of times while
// active. NV_ReadPublic runs outside any session: no HMAC covers its answer,
// an error answer least of all.
type hider struct {
	next   transport.TPM
	active atomic.Bool
	mu     sync.Mutex
	budget map[uint32]int // handle -> answers still to forge
	forged atomic.Int32
}

func (p *hider) Send(cmd []byte) ([]byte, error) {
	if p.active.Load() && len(cmd) >= 14 && binary.BigEndian.Uint32(cmd[6:]) == uint32(tpm2.TPMCCNVReadPublic) {
		h := binary.BigEndian.Uint32(cmd[10:])
		p.mu.Lock()
		n := p.budget[h]
		if n > 0 {
			p.budget[h] = n - 1
		}
		p.mu.Unlock()
		if n > 0 {
			p.forged.Add(1)
			rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
			rsp = binary.BigEndian.AppendUint32(rsp, 10)
			return binary.BigEndian.AppendUint32(rsp, uint32(tpm2.TPMRCHandle)+0x100), nil // TPM_RC_HANDLE + RC_1 (handle 1), as swtpm answers
		}
	}
	return p.next.Send(cmd)
}

// hiderFixture is a device whose bus runs through ip, with version 5
// committed by an authenticated set.
func hiderFixture(t *testing.T, ip *hider) *fixture {
	t.Helper()
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(n transport.TPM) transport.TPM { ip.next = n; return ip }))
	f := &fixture{env: env, dir: t.TempDir(), officer: newKey(t), signer: newKey(t)}
	f.images = filepath.Join(f.dir, "images")
	if err := os.MkdirAll(f.images, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.images, "boot.bin"), []byte("boot"))
	f.set(t, f.signer.Public(), nil)
	if res, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), true); err != nil || res.Lowest != 5 {
		t.Fatalf("commit v5: %+v %v", res, err)
	}
	return f
}

// TestHiddenAnchorAtSet: during an authenticated set, an interposer
// answers the anchor's and the counter's NV_ReadPublic with "no such
// index" (an error answer carries no HMAC). Found by a second review: the
// set took it for a first one and signed a floor of 0 over a committed 5;
// with one forged answer a --lowest-version below the floor passed. Now
// absence is read from the TPM's authenticated handle list, and an anchor
// that exists but does not read as provd's stops the set: nothing is
// written, the floor stays.
func TestHiddenAnchorAtSet(t *testing.T) {
	three := uint64(3)
	for _, c := range []struct {
		name   string
		budget map[uint32]int
		lowest *uint64
	}{
		{"first set", map[uint32]int{uint32(fwhook.AnchorHandle): 2, uint32(fwhook.CounterHandle): 1}, nil},
		{"lower floor", map[uint32]int{uint32(fwhook.AnchorHandle): 1}, &three},
	} {
		t.Run(c.name, func(t *testing.T) {
			ip := &hider{}
			f := hiderFixture(t, ip)
			ip.budget = c.budget
			ip.active.Store(true)
			_, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Next: newKey(t).Public(),
				Class: "gateway", CommitAuthPath: f.authPath(), Lowest: c.lowest})
			ip.active.Store(false)
			if err == nil || ip.forged.Load() == 0 {
				t.Fatalf("a set through the hiding interposer: %v (forged %d)", err, ip.forged.Load())
			}
			if in, err := fwhook.Read(f.env.TPM); err != nil || in.Lowest != 5 || in.Next != nil {
				t.Fatalf("the anchor after: %+v %v", in, err)
			}
		})
	}
}

// failingSigner is the officer's key on a token that refuses to sign (a
// removed smartcard, a PIN prompt cancelled, an HSM timeout).
type failingSigner struct{ crypto.Signer }

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("token: operation cancelled")
}

// TestFailedSetKeepsFloor: sets that fail after the counter was checked
// (the officer's token refuses to sign) change nothing. Found by a second
// review: proving the counter's authorization by an increment raised the
// floor by one per failed attempt, until the running release was refused.
// It is now proven by PolicySecret, which changes nothing.
func TestFailedSetKeepsFloor(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	v2 := f.manifest(t, f.signer, 2, "gateway")
	if res, err := f.verify(v2, true); err != nil || res.Lowest != 2 {
		t.Fatalf("commit v2: %+v %v", res, err)
	}
	before, err := fwhook.Read(f.env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: failingSigner{f.officer}, Signer: f.signer.Public(),
			Next: newKey(t).Public(), Class: "gateway", CommitAuthPath: f.authPath()}); err == nil {
			t.Fatal("a set with a failing token succeeded")
		}
	}
	after, err := fwhook.Read(f.env.TPM)
	if err != nil || after.Lowest != 2 || after.Counter != before.Counter {
		t.Fatalf("after three failed sets: %+v %v (counter was %d)", after, err, before.Counter)
	}
	// A wrong authorization on disk is found without an increment, and a
	// new counter takes over with the floor kept.
	writeFile(t, f.authPath(), bytes.Repeat([]byte{0x5a}, 32))
	if in := f.set(t, f.signer.Public(), nil); in.Lowest != 2 {
		t.Fatalf("after a new counter: %+v", in)
	}
	if res, err := f.verify(f.manifest(t, f.signer, 3, "gateway"), true); err != nil || res.Lowest != 3 {
		t.Fatalf("a commit with the new counter's authorization: %+v %v", res, err)
	}
}

// permLiar sets TPMA_PERMANENT.ownerAuthSet in unauthenticated
// GetCapability(TPM_PT_PERMANENT) answers.
type permLiar struct {
	next   transport.TPM
	active atomic.Bool
}

func (p *permLiar) Send(cmd []byte) ([]byte, error) {
	rsp, err := p.next.Send(cmd)
	if err != nil || !p.active.Load() || len(cmd) < 22 || binary.BigEndian.Uint32(cmd[6:]) != uint32(tpm2.TPMCCGetCapability) ||
		binary.BigEndian.Uint16(rsp) != uint16(tpm2.TPMSTNoSessions) || len(rsp) < 27 || binary.BigEndian.Uint32(rsp[6:]) != 0 {
		return rsp, err
	}
	if binary.BigEndian.Uint32(rsp[11:]) == uint32(tpm2.TPMCapTPMProperties) {
		n := int(binary.BigEndian.Uint32(rsp[15:]))
		for i := 0; i < n && 19+8*i+8 <= len(rsp); i++ {
			if binary.BigEndian.Uint32(rsp[19+8*i:]) == uint32(tpm2.TPMPTPermanent) {
				rsp[19+8*i+7] |= 1
			}
		}
	}
	return rsp, err
}

// TestOwnerAuthSetAuthenticated: whether the owner has an authorization
// (and so whether another process can replace the anchor) is read in a
// session salted to the pinned SRK: an interposer cannot hide the warning
// from the officer (found by a second review).
func TestOwnerAuthSetAuthenticated(t *testing.T) {
	ip := &permLiar{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(n transport.TPM) transport.TPM { ip.next = n; return ip }))
	f := &fixture{env: env, dir: t.TempDir(), officer: newKey(t), signer: newKey(t)}
	f.pin(t)
	ip.active.Store(true)
	in, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath()})
	ip.active.Store(false)
	if err != nil {
		t.Fatal(err)
	}
	if in.OwnerAuthSet || !in.Authenticated {
		t.Fatalf("owner_auth_set %v, authenticated %v, on a TPM whose owner has no authorization", in.OwnerAuthSet, in.Authenticated)
	}
}
