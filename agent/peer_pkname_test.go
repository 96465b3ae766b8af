package agent

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/provd/provd/test/swtpmtest"
)

// TestPeerFileMustBindItsPK: a peer file whose pk_name is not the
// PK T's policy binds is refused by TransferKey; the same name in upper
// case is the same PK.
func TestPeerFileMustBindItsPK(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	b := provisioned(t, env)
	peer, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	other := peer
	n, _ := hex.DecodeString(peer.PKName)
	n[33] ^= 1
	other.PKName = hex.EncodeToString(n)
	if _, _, err := other.TransferKey(); err == nil {
		t.Error("a peer file naming another PK than T's policy binds passed TransferKey")
	}
	upper := peer
	upper.PKName = strings.ToUpper(peer.PKName)
	if _, _, err := upper.TransferKey(); err != nil {
		t.Errorf("upper-case pk_name: %v", err)
	}
	short := peer
	short.PKName = peer.PKName[:66]
	if _, _, err := short.TransferKey(); err == nil {
		t.Error("a 33-byte pk_name passed")
	}
}
