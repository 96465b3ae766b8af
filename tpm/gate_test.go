package tpm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

const testGatedHandle tpm2.TPMHandle = 0x01500012

// rawPasswordExtend is TPM2_NV_Extend as tpm2_nvextend sends it for an index
// with an empty password: what any other process can send.
func rawPasswordExtend(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle, data []byte) tpm2.TPMRC {
	t.Helper()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0) // size, below
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tp.Send(b)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}

// A gated extend index takes extends only from a session that proved the
// gate's authorization: its name is the one computed offline from the gate's
// name, the gated extend chains like any other, and an empty-password extend
// (tpm2_nvextend by another process) is refused by the TPM.
func TestGatedExtendIndex(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	auth := newGateAuth(t)
	blob, err := tp.CreateGate(srk, auth)
	if err != nil {
		t.Fatal(err)
	}
	gate, err := tp.LoadGate(srk, blob, auth)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(gate.Handle)
	pub, err := tpm.GatedExtendPublic(testGatedHandle, gate.Name.Buffer, false)
	if err != nil {
		t.Fatal(err)
	}
	x, err := tp.DefineNV(pub)
	if err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testGatedHandle)
	if want, _ := tpm.NVPublicName(pub); !bytes.Equal(x.Name.Buffer, want) {
		t.Fatalf("defined name %x, computed %x", x.Name.Buffer, want)
	}
	if rc := rawPasswordExtend(t, tp, testGatedHandle, []byte("stray")); rc == tpm2.TPMRCSuccess {
		t.Fatal("an empty-password extend of a gated index succeeded")
	} else {
		t.Logf("empty-password extend: %v", rc)
	}
	d := sha256.Sum256([]byte("head"))
	if err := tp.NVExtendGated(testGatedHandle, d[:], gate); err != nil {
		t.Fatal(err)
	}
	got, err := tp.Anchor(testGatedHandle).Read()
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("gated extend gives %x, want %x", got, want)
	}
	written, _ := tpm.GatedExtendPublic(testGatedHandle, gate.Name.Buffer, true)
	if name, _ := tp.NVName(testGatedHandle); !bytes.Equal(name.Buffer, mustName(t, written)) {
		t.Fatalf("written name %x, computed %x", name.Buffer, mustName(t, written))
	}

	// Another key under the same SRK (anyone can make one) does not pass.
	oauth := newGateAuth(t)
	other, err := tp.CreateGate(srk, oauth)
	if err != nil {
		t.Fatal(err)
	}
	og, err := tp.LoadGate(srk, other, oauth)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(og.Handle)
	if err := tp.NVExtendGated(testGatedHandle, d[:], og); !errors.Is(err, tpm.ErrPolicyNotSatisfied) && !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("extend with another key: %v, want a policy failure", err)
	}
}

func newGateAuth(t *testing.T) []byte {
	t.Helper()
	auth, err := tpm.NewGateAuth(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return auth
}

// A gate's blob is no gate without its authorization value: loaded again
// (anyone who recorded the bus can), it satisfies PolicySecret only with the
// value, which never crossed the bus. With the SRK pinned, the gated extend
// runs in a salted session: a command changed on the bus is refused by the
// TPM.
func TestGateNeedsItsAuthValue(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	srk, blob, auth := pinnedGateBlob(t, tp)
	pub, err := tpm.GatedExtendPublic(testGatedHandle, mustBlobName(t, blob), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineNV(pub); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testGatedHandle)
	for _, tc := range []struct {
		name string
		auth []byte
	}{{"no value (the blob alone)", nil}, {"another value", newGateAuth(t)}} {
		g, err := tp.LoadGate(srk, blob, tc.auth)
		if err != nil {
			t.Fatal(err)
		}
		err = tp.NVExtendGated(testGatedHandle, make([]byte, 32), g)
		tp.Flush(g.Handle)
		if !errors.Is(err, tpm.ErrBadAuth) {
			t.Fatalf("%s: extend gave %v, want ErrBadAuth", tc.name, err)
		}
	}
	g, err := tp.LoadGate(srk, blob, auth)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(g.Handle)
	if err := tp.NVExtendGated(testGatedHandle, make([]byte, 32), g); err != nil {
		t.Fatal(err)
	}
	if n := rec.Leak(auth); n >= 0 {
		t.Fatalf("the gate's authorization value crossed the bus (bytes %d..%d)", n, n+8)
	}
}

func mustBlobName(t *testing.T, b tpm.Blob) []byte {
	t.Helper()
	n, err := b.Name()
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}

func mustName(t *testing.T, p tpm2.TPMSNVPublic) []byte {
	t.Helper()
	n, err := tpm.NVPublicName(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

const (
	testGatedCounter    tpm2.TPMHandle = 0x01500013
	testGatedAuthorizer tpm2.TPMHandle = 0x01500014
)

// rawPasswordIncrement is tpm2_nvincrement with the index's empty password.
func rawPasswordIncrement(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) tpm2.TPMRC {
	t.Helper()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVIncrement))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tp.Send(b)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}

// A gated counter has the name computed offline from its handle and its
// authorizer's handle alone, whatever the gate (so the same on every
// device); only the gate's holder increments it; the authorizer, locked,
// cannot be rewritten; PolicyNV still reads the counter.
func TestGatedCounter(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	var names [][]byte
	var gate tpm.Gate
	for i := range 2 { // two gates, as on two devices
		auth := newGateAuth(t)
		blob, err := tp.CreateGate(srk, auth)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			tp.Flush(gate.Handle)
		}
		if gate, err = tp.LoadGate(srk, blob, auth); err != nil {
			t.Fatal(err)
		}
		x, err := tp.DefineGatedCounter(testGatedCounter, testGatedAuthorizer, gate)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, x.Name.Buffer)
	}
	defer tp.Flush(gate.Handle)
	undefineAtEnd(t, tp, testGatedCounter)
	undefineAtEnd(t, tp, testGatedAuthorizer)
	pub, err := tpm.GatedCounterPublic(testGatedCounter, testGatedAuthorizer)
	if err != nil {
		t.Fatal(err)
	}
	if want := mustName(t, pub); !bytes.Equal(names[0], want) || !bytes.Equal(names[1], want) {
		t.Fatalf("counter names %x, offline %x", names, want)
	}

	before, err := tp.ReadCounter(testGatedCounter)
	if err != nil {
		t.Fatal(err)
	}
	if rc := rawPasswordIncrement(t, tp, testGatedCounter); rc == tpm2.TPMRCSuccess {
		t.Fatal("an empty-password increment of a gated counter succeeded")
	} else {
		t.Logf("empty-password increment: %v", rc)
	}
	// Rewriting the authorizer with a policy of one's own: locked.
	ax, err := tp.ReadNVPublic(testGatedAuthorizer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVWrite{AuthHandle: tpm2.AuthHandle{Handle: ax.Handle, Name: ax.Name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex: tpm2.NamedHandle{Handle: ax.Handle, Name: ax.Name}, Data: tpm2.TPM2BMaxNVBuffer{Buffer: make([]byte, 34)}}).Execute(tp); err == nil {
		t.Fatal("the locked authorizer was rewritten")
	}
	if err := tp.IncrementGated(testGatedCounter, testGatedAuthorizer, gate, 3); err != nil {
		t.Fatal(err)
	}
	after, err := tp.ReadCounter(testGatedCounter)
	if err != nil {
		t.Fatal(err)
	}
	if after != before+3 {
		t.Fatalf("counter %d -> %d, want three increments (the intruder's refused)", before, after)
	}
	// PolicyNV reads it with the empty password.
	s, err := tp.StartPolicySession(false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	op := binary.BigEndian.AppendUint64(nil, after)
	if err := s.PolicyNV(testGatedCounter, names[1], op, 0, tpm2.TPMEOUnsignedLE); err != nil {
		t.Fatalf("PolicyNV on the gated counter: %v", err)
	}
}
