package agent

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// TestProvenAnchorIsThisGatesOnlyOnce: the anchor a Read proved serves
// one Prepare, and only while it is the written anchor of the trail's gate
// (a new trail's gate, after a reanchor or a provision, names another
// index: its first extend must not be prepared for the old name, which
// the TPM would refuse as tampering).
func TestProvenAnchorIsThisGatesOnlyOnce(t *testing.T) {
	gateName := func(b byte) string {
		return hex.EncodeToString(append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{b}, 32)...))
	}
	old, cur := &gateRecord{Name: gateName(1)}, &gateRecord{Name: gateName(2)}
	was, err := old.writtenAnchor()
	if err != nil {
		t.Fatal(err)
	}
	is, err := cur.writtenAnchor()
	if err != nil {
		t.Fatal(err)
	}
	an := &trailAnchor{}
	an.proven.Store(&was)
	if x := an.provenAnchor(cur); x != nil {
		t.Fatalf("the old gate's anchor %x served the new gate's extend", x.Name.Buffer)
	}
	an.proven.Store(&is)
	if x := an.provenAnchor(cur); x == nil || !bytes.Equal(x.Name.Buffer, is.Name.Buffer) {
		t.Fatalf("the gate's own proven anchor not taken: %v", x)
	}
	if x := an.provenAnchor(cur); x != nil {
		t.Fatal("one read served two extends")
	}
}
