package tpm_test

// tpm.Wrap calls go-tpm's session-area parse errors forged for every
// command, not just the guarded load (issue 14, from its second review):
// an ordinary load in its own salted session with bytes after its sessions
// area, the area cut off, an HMAC cut short; and honest error answers of
// commands with sessions, which stay unforged.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// withSize rewrites a response's size field after its length changed.
func withSize(rsp []byte) []byte {
	binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
	return rsp
}

func TestSessionAreaForgedOnAnyCommand(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, _ := guardedSetup(t, tp)
	_ = tp.NeedsSweep()
	for _, c := range []struct {
		name   string
		change func(rsp []byte) []byte
	}{
		// After a load: handle (4), parameterSize (4), parameters, sessions.
		{"bytes after the sessions area", func(rsp []byte) []byte {
			return withSize(append(bytes.Clone(rsp), 0, 0, 0))
		}},
		{"the sessions area cut off", func(rsp []byte) []byte {
			psize := int(binary.BigEndian.Uint32(rsp[14:18]))
			return withSize(bytes.Clone(rsp[:18+psize]))
		}},
		{"one byte of the session entry cut", func(rsp []byte) []byte {
			return withSize(bytes.Clone(rsp[:len(rsp)-1]))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ran := false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad {
					return nil, nil, false
				}
				rsp, err := next.Send(cmd)
				if err != nil || rc(rsp) != tpm2.TPMRCSuccess {
					t.Errorf("the load: %v %v", err, rc(rsp))
					return rsp, err, true
				}
				ran = true
				return c.change(rsp), nil, true
			})
			obj, err := tp.Load(srk, nil, parentBlob)
			bus.Set(nil)
			if !ran {
				t.Fatal("the load was not changed")
			}
			if err == nil {
				tp.Flush(obj.Handle)
				t.Fatal("the changed answer was taken")
			}
			t.Logf("%v", err)
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("%v: want forged", err)
			}
			sweptAsAsked(t, tp)
		})
	}
	// Honest refusals of commands with sessions are the TPM's codes, never
	// forged: a blob whose private area does not verify (TPM_RC_INTEGRITY
	// or _SIZE), a load under a parent that is not loaded (the handle of a
	// TPM reset's victim).
	t.Run("honest refusals", func(t *testing.T) {
		bad := parentBlob
		priv := bytes.Clone(bad.Private.Buffer)
		priv[len(priv)-1] ^= 1
		bad.Private = tpm2.TPM2BPrivate{Buffer: priv}
		if _, err := tp.Load(srk, nil, bad); err == nil || errors.Is(err, tpm.ErrResponseForged) {
			t.Errorf("a damaged blob: %v, want the TPM's refusal, not forged", err)
		} else {
			t.Logf("damaged blob: %v", err)
		}
		gone := srk
		gone.Handle = 0x80ffff00
		if _, err := tp.Load(gone, nil, parentBlob); err == nil || errors.Is(err, tpm.ErrResponseForged) {
			t.Errorf("a parent not loaded: %v, want the TPM's refusal, not forged", err)
		} else {
			t.Logf("parent not loaded: %v", err)
		}
		_ = tp.NeedsSweep()
	})
}
