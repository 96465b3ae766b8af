package fwhook_test

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/test/swtpmtest"
)

// allocateBanks sends TPM2_PCR_Allocate (platform authorization, empty on
// swtpm; go-tpm has no struct for it) for SHA-1, SHA-256 and SHA-384, all
// 24 PCRs; it takes effect at the next TPM reset.
func allocateBanks(t *testing.T, f *fixture) {
	t.Helper()
	swtpmtest.AllocatePCRs(t, f.env.TPM, []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384}, nil)
	f.reboot()
}

// TestVerifyEveryBank: on a TPM with SHA-1, SHA-256 and SHA-384 banks the
// event carries a digest for each, the PCR is extended in each, and the
// log replays to the TPM's value in every bank.
func TestVerifyEveryBank(t *testing.T) {
	f := newFixture(t)
	allocateBanks(t, f)
	banks, err := f.env.TPM.PCRBanks()
	if err != nil || len(banks) != 3 {
		t.Fatalf("banks after allocation: %v %v", banks, err)
	}
	f.set(t, f.signer.Public(), nil)
	m := f.manifest(t, f.signer, 1, "gateway")
	res, err := f.verify(m, false)
	if err != nil || len(res.PCRValues) != 3 {
		t.Fatalf("%+v %v", res, err)
	}
	l, err := attest.ParseEventLog(mustRead(t, f.logPath()))
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Banks(); len(got) != 3 || len(l.Events) != 1 || len(l.Events[0].Digests) != 3 {
		t.Fatalf("log banks %v, events %d", got, len(l.Events))
	}
	rep, err := l.Replay(attest.Options{AllowSHA1: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range banks {
		v, err := f.env.TPM.PCRRead(b, []int{12})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v[12], rep[b][12]) || bytes.Equal(v[12], make([]byte, len(v[12]))) {
			t.Errorf("bank 0x%04x: PCR 12 %x, log %x", uint16(b), v[12], rep[b][12])
		}
		h, _ := b.Hash()
		s, _ := firmware.Parse(m)
		if want := attest.GoodPCR(h, mustName(t, f.officer.Public()), "gateway", s.Payload); !bytes.Equal(v[12], want) {
			t.Errorf("bank 0x%04x: PCR 12 %x, GoodPCR %x", uint16(b), v[12], want)
		}
	}
	if _, err := f.verify(f.manifest(t, newKey(t), 1, "gateway"), false); err == nil {
		t.Fatal("a foreign signer verified")
	}
	l, _ = attest.ParseEventLog(mustRead(t, f.logPath()))
	rep, _ = l.Replay(attest.Options{AllowSHA1: true})
	for _, b := range banks {
		v, _ := f.env.TPM.PCRRead(b, []int{12})
		if !bytes.Equal(v[12], rep[b][12]) {
			t.Errorf("after a failure, bank 0x%04x: PCR 12 %x, log %x", uint16(b), v[12], rep[b][12])
		}
	}
}
