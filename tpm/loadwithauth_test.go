package tpm_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// authParent creates and loads, under the pinned SRK, a storage key whose
// authValue is auth (as a transfer key, or an adopted PK's parent), and a
// child blob under it.
func authParent(t *testing.T, tp *tpm.TPM) (parent tpm.Object, auth []byte, child tpm.Blob) {
	t.Helper()
	srk, _, _ := pinnedGateBlob(t, tp)
	auth = newGateAuth(t)
	pb, err := tp.Create(srk, nil, tpm.SRKTemplate, tpm.Sensitive{UserAuth: auth})
	if err != nil {
		t.Fatal(err)
	}
	if parent, err = tp.Load(srk, nil, pb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Flush(parent.Handle) })
	if child, err = tp.Create(parent, tpm2.PasswordAuth(auth), tpm.GateTemplate(), tpm.Sensitive{UserAuth: newGateAuth(t)}); err != nil {
		t.Fatal(err)
	}
	return parent, auth, child
}

// LoadWithAuth authorizes the load with the parent's authValue in one
// session salted to the pinned SRK, whose HMACs also guard the command and
// its answer: Load starts no second session (issue 14: StartAuthSession,
// Load, FlushContext, where Load's own guard added a StartAuthSession and
// a FlushContext). A1 changing the blob on its way in gets the TPM's
// refusal of the HMAC (exit 11: a wrong value or a changed command, since
// review 79), the name in the answer a refusal as forged, and nothing
// stays loaded once the sweep that provd asks for has run.
func TestLoadWithAuthOneSession(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	parent, auth, child := authParent(t, tp)
	want, err := child.Name()
	if err != nil {
		t.Fatal(err)
	}

	log := &swtpmtest.CommandLog{}
	bus.Set(log.Hook)
	log.Start()
	obj, err := tp.LoadWithAuth(parent, tpm.ParentAuth{Value: auth}, child)
	cmds := log.Stop()
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(obj.Name.Buffer, want.Buffer) {
		t.Fatalf("loaded %x, want %x", obj.Name.Buffer, want.Buffer)
	}
	if w := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCFlushContext}; !slices.Equal(cmds, w) {
		t.Errorf("LoadWithAuth sent %v, want %v", cmds, w)
	}
	if err := tp.Flush(obj.Handle); err != nil {
		t.Fatal(err)
	}

	for name, tamper := range map[string]func(cmd, rsp []byte) (newCmd, newRsp []byte){
		"the blob changed on its way in": func(cmd, _ []byte) ([]byte, []byte) {
			cmd = bytes.Clone(cmd)
			cmd[len(cmd)-1] ^= 1 // the public area's last byte
			return cmd, nil
		},
		"the name changed in the answer": func(_, rsp []byte) ([]byte, []byte) {
			rsp = bytes.Clone(rsp)
			// handle, parameterSize, then TPM2B_NAME: its last byte.
			i := bytes.Index(rsp, want.Buffer)
			if i < 0 {
				return nil, rsp
			}
			rsp[i+len(want.Buffer)-1] ^= 1
			return nil, rsp
		},
	} {
		t.Run(name, func(t *testing.T) {
			bus.Set(tamperOn(tpm2.TPMCCLoad, tamper, nil))
			obj, err := tp.LoadWithAuth(parent, tpm.ParentAuth{Value: auth}, child)
			bus.Set(nil)
			// A command changed on its way is refused as a wrong value
			// would be (TPM_RC_BAD_AUTH): exit 11, which says either,
			// since a parent's value edited in the state gives the same
			// refusal (review 79); a changed answer is forged.
			if name == "the blob changed on its way in" {
				if !errors.Is(err, tpm.ErrBadAuth) || errors.Is(err, tpm.ErrResponseForged) {
					t.Fatalf("LoadWithAuth: %v (0x%08x), want the TPM's refusal of the HMAC (ErrBadAuth)", err, uint32(obj.Handle))
				}
			} else if !errors.Is(err, tpm.ErrResponseForged) {
				t.Fatalf("LoadWithAuth: %v (0x%08x), want forged", err, uint32(obj.Handle))
			}
			sweptAsAsked(t, tp, parent.Handle)
		})
	}
}

// tamperOn is swtpmtest.Tamper on every command cc.
func tamperOn(cc tpm2.TPMCC, tamper func(cmd, rsp []byte) (newCmd, newRsp []byte), ran *bool) swtpmtest.Hook {
	return swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == cc }, tamper, ran)
}

// sweptAsAsked does what the owner's sweep does after a failed operation
// (agent.sweepLeaks): it flushes every handle tp holds but held, and fails
// t for each one left when no sweep was asked for (NeedsSweep).
func sweptAsAsked(t *testing.T, tp *tpm.TPM, held ...tpm2.TPMHandle) {
	t.Helper()
	asked := tp.NeedsSweep()
	left, err := tp.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range left {
		if slices.Contains(held, h) {
			continue
		}
		if !asked {
			t.Errorf("0x%08x left in the TPM and no sweep asked for", uint32(h))
		}
		if err := tp.Flush(h); err != nil {
			t.Fatal(err)
		}
	}
}
