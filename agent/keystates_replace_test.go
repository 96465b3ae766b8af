package agent

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// TestReplacedKeptEntryClearsItsAuthValue: a key use whose key is no
// longer resident (more keys in use than the key cache keeps, or a stale
// handle) reads the state again and replaces its kept entry; the replaced
// entry's decoded authValue is cleared, not dropped to the heap (found by
// the second review of issue 14).
func TestReplacedKeptEntryClearsItsAuthValue(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "j", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("j"))
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sign(ctx, "j", d[:], api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	// k leaves the key cache, as the least recently used of more keys
	// than it keeps, or with a stale handle: its next use reads the state
	// again (errReadForLoad).
	if err := a.keys.Drop("k"); err != nil {
		a.mu.Unlock()
		t.Fatal(err)
	}
	old := a.states.keys["k"].pk.auth
	was := string(old)
	a.mu.Unlock()
	if len(old) == 0 {
		t.Fatal("setup: nothing kept for k")
	}
	if _, err := signK(a); err != nil { // k loaded again from the state read again
		t.Fatal(err)
	}
	a.mu.Lock()
	cur := a.states.keys["k"].pk.auth
	a.mu.Unlock()
	if sameBytes(cur, old) {
		t.Fatal("setup: the kept entry was not replaced")
	}
	if string(old) == was {
		t.Fatalf("the replaced kept entry's authValue (%d bytes) was dropped uncleared", len(old))
	}
}
