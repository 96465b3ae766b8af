package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
)

// pcrReadLiar is A1 on the PCR reads a seal makes without a session: it
// changes the last value of the first `lies` plain TPM2_PCR_Read answers
// (the highest PCR read, here 16), and counts the reads and creations. With
// extendAfterRead it instead extends PCR 16 right after the first plain
// read, as a measurement landing between the read and the creation would.
type pcrReadLiar struct {
	mu              sync.Mutex
	lies            int
	extendAfterRead bool
	reads, creates  int
	err             error
}

func (x *pcrReadLiar) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	rsp, err := next.Send(cmd)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err, true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	switch swtpmtest.CommandCode(cmd) {
	case tpm2.TPMCCCreate:
		x.creates++
	case tpm2.TPMCCPCRRead:
		if binary.BigEndian.Uint16(cmd[0:2]) != uint16(tpm2.TPMSTNoSessions) {
			break // an authenticated read: not the seal's
		}
		x.reads++
		if x.extendAfterRead && x.reads == 1 {
			d := sha256.Sum256([]byte("a measurement between the read and the creation"))
			_, x.err = tpm2.PCRExtend{
				PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)},
				Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
			}.Execute(next)
		}
		if x.lies > 0 {
			x.lies--
			rsp = bytes.Clone(rsp)
			rsp[len(rsp)-1] ^= 0x5a
		}
	}
	return rsp, err, true
}

func (x *pcrReadLiar) counts() (reads, creates int, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.reads, x.creates, x.err
}

// sealedPCR16 is the PCR 16 value a sealed blob's policy was made from.
func sealedPCR16(t *testing.T, blob []byte) []byte {
	t.Helper()
	var b struct {
		Policy struct {
			Values policy.PCRValues `json:"pcr_values"`
		} `json:"policy"`
	}
	if err := json.Unmarshal(blob, &b); err != nil {
		t.Fatal(err)
	}
	return b.Policy.Values.Values[16]
}

// TestSealedPCRValuesAreWitnessedAtCreation: a seal to the PCRs' current
// values reads them with a plain PCR_Read (no session: issue 14, 2
// commands fewer) and has the TPM witness them in the creation's answer,
// which the PK's salted policy session authenticates. A1 changing the read
// gets no object sealed to its values: the creation is made again from a
// fresh read, and after three changed reads the seal fails with nothing
// sealed. A PCR extended between the read and the creation is read again.
// Whatever is sealed unseals on this boot.
func TestSealedPCRValuesAreWitnessedAtCreation(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ag := newAgent(t, env, stateDir(t))
	provision(t, ag, 7) // the PK on PCR 7 alone: the test moves PCR 16
	ctx := context.Background()
	secret := []byte("the disk key")
	req := api.SealRequest{Data: secret, PCRs: []int{7, 16}, AllowResettable: true}

	for _, tc := range []struct {
		name            string
		lies            int
		extendAfterRead bool
		reads, creates  int
	}{
		{"an honest bus", 0, false, 1, 1},
		{"the first read changed", 1, false, 2, 2},
		{"the first two reads changed", 2, false, 3, 3},
		{"PCR 16 extended between the read and the creation", 0, true, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := &pcrReadLiar{lies: tc.lies, extendAfterRead: tc.extendAfterRead}
			b.Set(x.hook)
			blob, err := ag.Seal(ctx, req)
			b.Set(nil)
			if err != nil {
				t.Fatal(err)
			}
			truth, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{16})
			if err != nil {
				t.Fatal(err)
			}
			if got := sealedPCR16(t, blob); !bytes.Equal(got, truth[16]) {
				t.Fatalf("sealed to PCR 16 = %x, the TPM has %x", got, truth[16])
			}
			reads, creates, xerr := x.counts()
			if xerr != nil {
				t.Fatal(xerr)
			}
			if reads != tc.reads || creates != tc.creates {
				t.Fatalf("%d plain reads and %d creations, want %d and %d", reads, creates, tc.reads, tc.creates)
			}
			out, err := ag.Unseal(ctx, blob)
			if err != nil {
				t.Fatalf("unseal on the boot it was sealed on: %v", err)
			}
			if !bytes.Equal(out, secret) {
				t.Fatal("unsealed something else")
			}
		})
	}

	t.Run("every read changed", func(t *testing.T) {
		x := &pcrReadLiar{lies: 100}
		b.Set(x.hook)
		blob, err := ag.Seal(ctx, req)
		b.Set(nil)
		if err == nil || !strings.Contains(err.Error(), "kept changing") || blob != nil {
			t.Fatalf("seal with every read changed: %d bytes, %v; want nothing sealed and the PCRs kept changing", len(blob), err)
		}
		if reads, creates, _ := x.counts(); reads != 3 || creates != 3 {
			t.Fatalf("%d plain reads and %d creations, want 3 of each", reads, creates)
		}
		if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
			t.Fatalf("left in the TPM: %v (%v)", left, err)
		}
	})
}
