package agent

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
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

// TestProvenAnchorDroppedByEveryReadAndReadPrepare: a Read that fails
// (here: no gate, a new trail) and a ReadPrepare that fails before reading
// (here: an unreadable gate file) leave no proven anchor for a later
// Prepare (found by review: no test failed without either drop).
func TestProvenAnchorDroppedByEveryReadAndReadPrepare(t *testing.T) {
	g := &gateRecord{Name: "000b" + "0101010101010101010101010101010101010101010101010101010101010101"}
	x, err := g.writtenAnchor()
	if err != nil {
		t.Fatal(err)
	}
	an := &trailAnchor{dir: t.TempDir()}
	an.proven.Store(&x)
	if _, err := an.Read(); err == nil {
		t.Fatal("a read without a gate succeeded")
	}
	if an.proven.Load() != nil {
		t.Error("a failed Read left the earlier Read's proven anchor")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, gateFile), []byte("not a gate"), 0o600); err != nil {
		t.Fatal(err)
	}
	an = &trailAnchor{dir: dir}
	an.proven.Store(&x)
	if _, _, _, err := an.ReadPrepare([]byte("head")); err == nil {
		t.Fatal("ReadPrepare with a broken gate file succeeded")
	}
	if an.proven.Load() != nil {
		t.Error("a failed ReadPrepare left the earlier Read's proven anchor")
	}
}
