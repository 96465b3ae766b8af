package tpm

import (
	"encoding/binary"
	"errors"
	"maps"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// liveCmd is a command cc with handles, and, when sessions is not nil, an
// authorization area of those sessions (handle, continueSession).
func liveCmd(cc tpm2.TPMCC, handles []uint32, sessions map[uint32]bool) []byte {
	tag := tpm2.TPMSTNoSessions
	if sessions != nil {
		tag = tpm2.TPMSTSessions
	}
	b := binary.BigEndian.AppendUint16(nil, uint16(tag))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(cc))
	for _, h := range handles {
		b = binary.BigEndian.AppendUint32(b, h)
	}
	if sessions != nil {
		var area []byte
		for h, cont := range sessions {
			area = binary.BigEndian.AppendUint32(area, h)
			area = append(area, 0, 2, 0xaa, 0xbb) // nonce
			attrs := byte(0)
			if cont {
				attrs = 1
			}
			area = append(area, attrs, 0, 1, 0xcc) // attributes, hmac
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(area)))
		b = append(b, area...)
	}
	b = append(b, 0, 0) // a parameter
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return b
}

// liveRsp is an answer rc, with a handle when h is not 0.
func liveRsp(rc tpm2.TPMRC, h uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(rc))
	if h != 0 {
		b = binary.BigEndian.AppendUint32(b, h)
	}
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return b
}

// The set follows a session from the StartAuthSession that made it to the
// TPM's word that it is gone, and no further: a flush done, or refused for
// nothing at the handle; a command done with continueSession clear in it.
// A refused command, a flush refused otherwise, a command it cannot parse
// or does not know leave it counted.
func TestLiveSessions(t *testing.T) {
	const hmac, pol, other = 0x02000000, 0x03000001, 0x02000002
	sas := liveCmd(tpm2.TPMCCStartAuthSession, []uint32{0x40000007, 0x40000007}, nil)
	for _, c := range []struct {
		name     string
		cmd, rsp []byte
		want     []uint32
	}{
		{"a session started", sas, liveRsp(tpm2.TPMRCSuccess, other), []uint32{hmac, pol, other}},
		{"a start refused", sas, liveRsp(tpm2.TPMRCSessionMemory, 0), []uint32{hmac, pol}},
		{"a start answered an object's handle", sas, liveRsp(tpm2.TPMRCSuccess, 0x80000001), []uint32{hmac, pol}},
		{"flushed", liveCmd(tpm2.TPMCCFlushContext, []uint32{pol}, nil), liveRsp(tpm2.TPMRCSuccess, 0), []uint32{hmac}},
		{"a flush of nothing there", liveCmd(tpm2.TPMCCFlushContext, []uint32{pol}, nil), liveRsp(0x1cb, 0) /* TPM_RC_HANDLE, parameter 1 */, []uint32{hmac}},
		{"a flush refused otherwise", liveCmd(tpm2.TPMCCFlushContext, []uint32{pol}, nil), liveRsp(tpm2.TPMRCFailure, 0), []uint32{hmac, pol}},
		{"continueSession clear, done", liveCmd(tpm2.TPMCCNVRead, []uint32{0x01500000, 0x01500000}, map[uint32]bool{pol: false, hmac: true}),
			liveRsp(tpm2.TPMRCSuccess, 0), []uint32{hmac}},
		{"continueSession clear, refused", liveCmd(tpm2.TPMCCNVRead, []uint32{0x01500000, 0x01500000}, map[uint32]bool{pol: false}),
			liveRsp(tpm2.TPMRCBadAuth, 0), []uint32{hmac, pol}},
		{"continueSession set", liveCmd(tpm2.TPMCCSign, []uint32{0x80000001}, map[uint32]bool{pol: true}), liveRsp(tpm2.TPMRCSuccess, 0), []uint32{hmac, pol}},
		{"a command it does not know", liveCmd(tpm2.TPMCCClear, []uint32{0x4000000c}, map[uint32]bool{pol: false}), liveRsp(tpm2.TPMRCSuccess, 0), []uint32{hmac, pol}},
		{"the password session", liveCmd(tpm2.TPMCCSign, []uint32{0x80000001}, map[uint32]bool{0x40000009: false}), liveRsp(tpm2.TPMRCSuccess, 0), []uint32{hmac, pol}},
		{"a truncated authorization area", liveCmd(tpm2.TPMCCSign, []uint32{0x80000001}, map[uint32]bool{pol: false})[:18], liveRsp(tpm2.TPMRCSuccess, 0), []uint32{hmac, pol}},
	} {
		l := liveSessions{hmac: true, pol: true}
		l.note(c.cmd, c.rsp)
		want := liveSessions{}
		for _, h := range c.want {
			want[tpm2.TPMHandle(h)] = true
		}
		if !maps.Equal(l, want) {
			t.Errorf("%s: %v, want %v", c.name, l, want)
		}
	}
}

// note takes any command and answer bytes: it never panics, and a session
// leaves the set only for a command whose answer is a success or a
// flush's TPM_RC_HANDLE.
func FuzzLiveSessionsNote(f *testing.F) {
	f.Add(liveCmd(tpm2.TPMCCNVRead, []uint32{1, 1}, map[uint32]bool{0x03000001: false}), liveRsp(tpm2.TPMRCSuccess, 0))
	f.Add(liveCmd(tpm2.TPMCCFlushContext, []uint32{0x03000001}, nil), liveRsp(tpm2.TPMRCSuccess, 0))
	f.Add(liveCmd(tpm2.TPMCCStartAuthSession, []uint32{0x40000007, 0x40000007}, nil), liveRsp(tpm2.TPMRCSuccess, 0x03000002))
	f.Fuzz(func(t *testing.T, cmd, rsp []byte) {
		l := liveSessions{0x02000000: true, 0x03000001: true}
		l.note(cmd, rsp)
		if len(l) >= 2 || len(rsp) < headerSize {
			return
		}
		rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
		cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
		if rc != tpm2.TPMRCSuccess && (cc != tpm2.TPMCCFlushContext || !errors.Is(rc, tpm2.TPMRCHandle)) {
			t.Fatalf("command 0x%x answered 0x%x: a session left the set", uint32(cc), uint32(rc))
		}
	})
}
