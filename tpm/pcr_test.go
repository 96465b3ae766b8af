package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
)

func allPCRs() []int {
	out := make([]int, 24)
	for i := range out {
		out[i] = i
	}
	return out
}

func TestPCRBanks(t *testing.T) {
	env := swtpmtest.Start(t)
	banks, err := env.TPM.PCRBanks()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(banks, tpm2.TPMAlgSHA256) {
		t.Fatalf("active banks %v, want sha256 among them", banks)
	}
}

// Reading all 24 PCRs takes three calls of 8, and every value comes back.
func TestPCRReadAll(t *testing.T) {
	env := swtpmtest.Start(t)
	before := env.TPM.Stats()
	vals, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, allPCRs())
	if err != nil {
		t.Fatal(err)
	}
	if d := env.TPM.Stats().Sub(before); d.Commands != 3 {
		t.Errorf("reading 24 PCRs took %d commands, want 3", d.Commands)
	}
	if len(vals) != 24 {
		t.Fatalf("got %d PCRs, want 24", len(vals))
	}
	for i, v := range vals {
		if len(v) != sha256.Size {
			t.Errorf("PCR %d: %d bytes", i, len(v))
		}
	}
	// PCR 16 (debug) is zero after startup.
	if !bytes.Equal(vals[16], make([]byte, sha256.Size)) {
		t.Errorf("PCR 16 = %x after startup, want zeros", vals[16])
	}
	// Duplicates and order do not matter.
	again, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{16, 0, 16})
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 2 || !bytes.Equal(again[0], vals[0]) || !bytes.Equal(again[16], vals[16]) {
		t.Fatalf("PCRRead(16,0,16) = %x", again)
	}
}

func TestPCRReadRefuses(t *testing.T) {
	env := swtpmtest.Start(t)
	for name, tc := range map[string]struct {
		bank tpm2.TPMIAlgHash
		pcrs []int
	}{
		"none":          {tpm2.TPMAlgSHA256, nil},
		"negative":      {tpm2.TPMAlgSHA256, []int{-1}},
		"above 23":      {tpm2.TPMAlgSHA256, []int{24}},
		"inactive bank": {tpm2.TPMAlgSHA384, []int{0}}, // a provisioned swtpm has only sha256
	} {
		if _, err := env.TPM.PCRRead(tc.bank, tc.pcrs); err == nil {
			t.Errorf("%s: PCRRead accepted", name)
		}
	}
}

func TestPCRExtendAndUpdateCounter(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	tp := env.TPM
	c0, err := tp.PCRUpdateCounter()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("event"))
	if err := tp.PCRExtend(16, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
	vals, err := tp.PCRRead(tpm2.TPMAlgSHA256, []int{16})
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(vals[16], want[:]) {
		t.Fatalf("PCR 16 = %x, want %x", vals[16], want)
	}
	// PCR 16 is exempt from the update counter (PC Client); PCR 15 is not.
	c1, err := tp.PCRUpdateCounter()
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c0 {
		t.Fatalf("pcrUpdateCounter moved from %d to %d after extending PCR 16", c0, c1)
	}
	if err := tp.PCRExtend(15, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
	c2, err := tp.PCRUpdateCounter()
	if err != nil {
		t.Fatal(err)
	}
	if c2 == c1 {
		t.Fatalf("pcrUpdateCounter stayed at %d after extending PCR 15", c1)
	}
	// A digest of the wrong size and a bad PCR index are refused before the TPM.
	wantProvdRefusal(t, tp.PCRExtend(16, tpm2.TPMAlgSHA256, d[:20]), "PCRExtend of a 20-byte digest in sha256")
	wantProvdRefusal(t, tp.PCRExtend(24, tpm2.TPMAlgSHA256, d[:]), "PCRExtend of PCR 24")
}

// pcrReadCC is TPM_CC_PCR_Read.
const pcrReadCC = 0x0000017E

// shortReader makes the TPM answer fewer PCRs than asked: it rewrites every
// PCR_Read command to select only the lowest `keep` PCRs of its selection,
// as a TPM may legitimately do. Before the PCR_Read number extendAt (1-based,
// 0: never) it extends PCR 15, to move the update counter between calls
// (PCR 16 would not move it).
type shortReader struct {
	next     transport.TPM
	keep     int
	extendAt int
	reads    int
}

func (s *shortReader) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:10]) == pcrReadCC {
		s.reads++
		if s.reads == s.extendAt {
			d := sha256.Sum256([]byte("between calls"))
			if _, err := (tpm2.PCRExtend{
				PCRHandle: tpm2.AuthHandle{Handle: 15, Auth: tpm2.PasswordAuth(nil)},
				Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
			}).Execute(s.next); err != nil {
				return nil, err
			}
		}
		if s.keep > 0 {
			cmd = slices.Clone(cmd)
			// header(10) count(4) hash(2) sizeofSelect(1) bitmap
			n := int(cmd[16])
			kept := 0
			for i := 0; i < n; i++ {
				for bit := 0; bit < 8; bit++ {
					if cmd[17+i]&(1<<bit) == 0 {
						continue
					}
					if kept < s.keep {
						kept++
					} else {
						cmd[17+i] &^= 1 << bit
					}
				}
			}
		}
	}
	return s.next.Send(cmd)
}

// A TPM that returns fewer PCRs than asked is asked again for the rest.
func TestPCRReadAsksAgainForMissing(t *testing.T) {
	sr := &shortReader{keep: 3}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		sr.next = next
		return sr
	}))
	vals, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, allPCRs())
	if err != nil {
		t.Fatal(err)
	}
	if len(vals) != 24 {
		t.Fatalf("got %d PCRs, want 24", len(vals))
	}
	if sr.reads != 8 {
		t.Errorf("%d PCR_Read calls, want 8 (24 PCRs, 3 per answer)", sr.reads)
	}
}

// PCRs that change between the calls of one read make it start over, so the
// values returned are one snapshot.
func TestPCRReadRestartsWhenPCRsChange(t *testing.T) {
	sr := &shortReader{extendAt: 2}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		sr.next = next
		return sr
	}))
	env.RequireSimulator()
	vals, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, allPCRs())
	if err != nil {
		t.Fatal(err)
	}
	if sr.reads != 5 {
		t.Errorf("%d PCR_Read calls, want 5 (2 before the change, then 3)", sr.reads)
	}
	d := sha256.Sum256([]byte("between calls"))
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(vals[15], want[:]) {
		t.Fatalf("PCR 15 = %x, want the value after the change %x", vals[15], want)
	}
}
