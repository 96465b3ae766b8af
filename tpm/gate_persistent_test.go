package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A gate key made persistent proves in place (issue 14): PolicySecret on
// its persistent handle, no TPM2_Load and no flush of it, and the extend is
// made. An empty handle, or one that holds another gate key (whoever has
// the owner's authorization can put one there), proves nothing:
// ErrPersistentGate, the anchor unmoved, nothing left in the TPM.
func TestPersistentGate(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	tp := env.TPM
	first := sha256.Sum256([]byte("head"))
	gate, x, _, auth := gatedIndex(t, tp, testGatedHandle, first[:])
	const h tpm2.TPMHandle = 0x81007f01
	pg := tpm.PersistentGate(h, gate.Name.Buffer, auth)
	extend := func(head []byte) error {
		ge, err := tp.PrepareGatedExtendOf(x, pg, head)
		if err != nil {
			return err
		}
		return errors.Join(ge.Extend(), ge.Close())
	}
	anchor := func() []byte {
		v, err := tp.ReadExtendIndex(x)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	nothingLeft := func() {
		t.Helper()
		left, err := tp.Leftovers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range left {
			if l != gate.Handle {
				t.Errorf("left in the TPM: 0x%x", l)
			}
		}
	}
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	otherAuth := newGateAuth(t)
	otherBlob, err := tp.CreateGate(srk, otherAuth)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		put  func() // what h holds
	}{
		{"an empty handle", func() {}},
		{"another gate key", func() {
			og, err := tp.LoadGate(srk, otherBlob, otherAuth)
			if err != nil {
				t.Fatal(err)
			}
			if err := errors.Join(tp.Persist(og.Object, h), tp.Flush(og.Handle)); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.put()
			defer tp.Evict(h)
			was := anchor()
			head := sha256.Sum256([]byte(tc.name))
			if err := extend(head[:]); !errors.Is(err, tpm.ErrPersistentGate) {
				t.Fatalf("the proof with %s: %v, want ErrPersistentGate", tc.name, err)
			}
			if now := anchor(); !bytes.Equal(now, was) {
				t.Error("the anchor moved")
			}
			nothingLeft()
		})
	}

	if err := tp.Persist(gate.Object, h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Evict(h) })
	was := anchor()
	head := sha256.Sum256([]byte("in place"))
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	err = extend(head[:])
	cmds := log.Stop()
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := swtpmtest.Count(cmds, tpm2.TPMCCLoad); n != 0 {
		t.Errorf("%d loads for a persistent gate's proof", n)
	}
	if now := anchor(); !bytes.Equal(now, chained(was, head[:])) {
		t.Errorf("anchor %x, want the head extended once", now)
	}
	nothingLeft()
}
