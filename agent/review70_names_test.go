package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: key names that collide or hide do not confuse which key is used.
// "sig" and "SIG" are two keys (two records, two blobs), each signing with
// its own key; names carrying path characters, a look-alike Cyrillic
// letter, a trailing NUL or newline, a leading dot or dash, or more than the
// store takes are refused as bad input before anything is made, and every
// use, export or delete under such a name is refused too, never answered
// with "sig".
func TestReview70KeyNamesDoNotCollide(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env) // has "sig"
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "SIG", Type: "ecc-p256"}); err != nil {
		t.Fatalf("SIG beside sig: %v", err)
	}
	lower, _, err := ag.KeyPublic(ctx, "sig")
	if err != nil {
		t.Fatal(err)
	}
	upper, _, err := ag.KeyPublic(ctx, "SIG")
	if err != nil {
		t.Fatal(err)
	}
	if lower.(*ecdsa.PublicKey).Equal(upper) {
		t.Fatal("sig and SIG are one key")
	}
	d := sha256.Sum256([]byte("review 70"))
	for name, pub := range map[string]*ecdsa.PublicKey{"sig": lower.(*ecdsa.PublicKey), "SIG": upper.(*ecdsa.PublicKey)} {
		sig, err := ag.Sign(ctx, name, d[:], api.SignOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Errorf("%s signed with another key", name)
		}
	}
	for _, bad := range []string{"../sig", "sig/", "./sig", "s\u0456g", "sig\x00", "sig\n", ".sig", "-sig", "sig ", strings.Repeat("s", 125), "key.sig", "sig~1"} {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: bad, Type: "ecc-p256"}); err == nil && bad != "key.sig" {
			t.Errorf("create %q: made", bad)
		} else if err != nil && !errors.Is(err, api.ErrBadInput) {
			t.Errorf("create %q: %v, want bad input", bad, err)
		}
		if _, err := ag.Sign(ctx, bad, d[:], api.SignOptions{}); err == nil && bad != "key.sig" {
			t.Errorf("sign %q: signed", bad)
		}
		if _, err := ag.ExportKeyBlob(ctx, bad); err == nil && bad != "key.sig" {
			t.Errorf("export-blob %q: exported", bad)
		}
	}
	// "key.sig" is a valid name of its own (record "key.key.sig"): it is
	// not "sig".
	p, _, err := ag.KeyPublic(ctx, "key.sig")
	if err != nil {
		t.Fatal(err)
	}
	if p.(*ecdsa.PublicKey).Equal(lower) {
		t.Error(`"key.sig" is "sig"`)
	}
	if err := ag.DeleteKey(ctx, "key.sig"); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
		t.Errorf("sig after key.sig's delete: %v", err)
	}
}
