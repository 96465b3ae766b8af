package fwhook_test

// Attacks an adversarial review of the boot hook found, kept as tests: each
// broke the hook before its fix.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
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
