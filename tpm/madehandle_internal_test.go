package tpm

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// madeHandle takes any command and answer bytes: it refuses only with
// ErrResponseForged, never refuses a command that makes no handle, and
// what it lets through is a transient object's or a session's handle,
// never a persistent one, an NV index or a hierarchy.
func FuzzMadeHandle(f *testing.F) {
	header := func(cc tpm2.TPMCC, rest ...byte) []byte {
		b := make([]byte, headerSize, headerSize+len(rest))
		binary.BigEndian.PutUint16(b, uint16(tpm2.TPMSTNoSessions))
		binary.BigEndian.PutUint32(b[2:], uint32(headerSize+len(rest)))
		binary.BigEndian.PutUint32(b[6:], uint32(cc))
		return append(b, rest...)
	}
	answer := func(h uint32) []byte {
		return binary.BigEndian.AppendUint32(header(0), h)
	}
	sas := header(tpm2.TPMCCStartAuthSession, 0x40, 0, 0, 7, 0x40, 0, 0, 7, 0, 0, 0, 0, byte(tpm2.TPMSEPolicy))
	ctx := header(tpm2.TPMCCContextLoad, 0, 0, 0, 0, 0, 0, 0, 1, 0x02, 0, 0, 1)
	f.Add(header(tpm2.TPMCCLoad, 0x81, 0, 0, 1), answer(0x80000001))
	f.Add(header(tpm2.TPMCCLoad), answer(0x81000001))
	f.Add(sas, answer(0x03000000))
	f.Add(sas, answer(0x02000000))
	f.Add(ctx, answer(0x02000001))
	f.Add(ctx, answer(0x80000001))
	f.Add(header(tpm2.TPMCCSign), []byte{})
	makes := map[tpm2.TPMCC]bool{tpm2.TPMCCLoad: true, tpm2.TPMCCLoadExternal: true, tpm2.TPMCCCreatePrimary: true,
		tpm2.TPMCCCreateLoaded: true, tpm2.TPMCCHMACStart: true, tpm2.TPMCCHashSequenceStart: true,
		tpm2.TPMCCStartAuthSession: true, tpm2.TPMCCContextLoad: true}
	f.Fuzz(func(t *testing.T, cmd, rsp []byte) {
		if len(cmd) < headerSize {
			return // the channel refuses such a command before it is sent (checkSize)
		}
		cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
		err := madeHandle(cmd, rsp)
		switch {
		case err != nil && !errors.Is(err, ErrResponseForged):
			t.Fatalf("command 0x%x: %v, not ErrResponseForged", uint32(cc), err)
		case err != nil && !makes[cc]:
			t.Fatalf("command 0x%x makes no handle, refused: %v", uint32(cc), err)
		case err == nil && makes[cc]:
			if len(rsp) < headerSize+4 {
				t.Fatalf("command 0x%x: an answer without a handle let through", uint32(cc))
			}
			if kind := rsp[headerSize]; kind != 0x80 && kind != 0x02 && kind != 0x03 {
				t.Fatalf("command 0x%x: handle 0x%08x let through", uint32(cc), binary.BigEndian.Uint32(rsp[headerSize:]))
			}
		}
	})
}
