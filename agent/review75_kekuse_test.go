package agent_test

import (
	"context"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (a regression of f708e17, keyState.usePolicy; failed before the
// mend: a KEK's record, which names no policy, is not checked): a genuine KEK named where a key
// that signs, HMACs or encrypts is needed is reported tampered. A KEK's
// record names no policy (importKEK writes none: the KEK is used through
// its authValue, withKEKBlock), and useKeyState now checks, before the
// kind, that the record's policy is the one its kind, extractability and
// rule describe: ObjectPolicy(P) for a fixed key, which "" is not. Before
// f708e17 the use reached keyObject, which refused the KEK as what it is
// (errKEKOnly, api.ErrNotPermitted, exit 5); now it is api.ErrTampered
// ("its record (kind "kek", extractable false) does not describe the
// policy it names"), which tells the operator that the state directory
// was edited, when nothing was (agent's own TestKEKCeremonyRefusesWrongComponents
// fails on it too). Who: every operator or caller of a device holding a
// KEK who names it in key sign/hmac/encrypt/decrypt (a typo, a script
// listing every key), and whoever acts on a tamper report.
func TestReview75AKEKNamedForAUseIsNotTampered(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env)
	c := newCeremony(t, 2, 32)
	if _, err := ag.ImportKEK(ctx, c.request("kek")); err != nil {
		t.Fatal(err)
	}
	uses := []struct {
		what string
		do   func() error
	}{
		{"sign", func() error { _, err := ag.Sign(ctx, "kek", make([]byte, 32), api.SignOptions{}); return err }},
		{"hmac", func() error { _, err := ag.HMAC(ctx, "kek", []byte("data")); return err }},
		{"encrypt", func() error { _, err := ag.EncryptData(ctx, "kek", []byte("data")); return err }},
		{"decrypt", func() error {
			env := append([]byte("PROVDAE1"), make([]byte, 92)...)
			_, err := ag.DecryptData(ctx, "kek", env)
			return err
		}},
	}
	for _, u := range uses {
		err := u.do()
		if !errors.Is(err, api.ErrNotPermitted) || errors.Is(err, api.ErrTampered) {
			t.Errorf("key %s with a genuine KEK: %v (exit %d), want the KEK refused as a KEK (api.ErrNotPermitted, exit %d), not a tampered state",
				u.what, err, api.ExitCode(err), api.ExitCode(api.ErrNotPermitted))
		}
	}
}
