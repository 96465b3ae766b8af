package tpm

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// madeHandle takes any answer bytes: a handle of the kind the command
// makes passes, any other kind, or none, is ErrResponseForged, and a
// command that makes no handle is never refused.
func FuzzMadeHandle(f *testing.F) {
	ok := make([]byte, 14)
	binary.BigEndian.PutUint32(ok[10:], 0x80000001)
	f.Add(uint32(tpm2.TPMCCLoad), ok)
	f.Add(uint32(tpm2.TPMCCStartAuthSession), ok)
	f.Add(uint32(tpm2.TPMCCContextLoad), ok[:12])
	f.Add(uint32(tpm2.TPMCCSign), []byte{})
	f.Fuzz(func(t *testing.T, code uint32, rsp []byte) {
		cc := tpm2.TPMCC(code)
		err := madeHandle(cc, rsp)
		if err != nil && !errors.Is(err, ErrResponseForged) {
			t.Fatalf("%v: %v, not ErrResponseForged", cc, err)
		}
		if len(rsp) < headerSize+4 {
			return
		}
		kind := rsp[headerSize]
		var want bool
		switch cc {
		case tpm2.TPMCCLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreateLoaded,
			tpm2.TPMCCHMACStart, tpm2.TPMCCHashSequenceStart:
			want = kind == 0x80
		case tpm2.TPMCCStartAuthSession:
			want = kind == 0x02 || kind == 0x03
		case tpm2.TPMCCContextLoad:
			want = kind == 0x80 || kind == 0x02 || kind == 0x03
		default:
			want = true
		}
		if want != (err == nil) {
			t.Fatalf("%v answering handle kind 0x%02x: %v", cc, kind, err)
		}
	})
}
