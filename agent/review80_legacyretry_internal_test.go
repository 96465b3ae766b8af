package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review80LoadUnderLegacyT is a match for the TPM2_Load of a key under a
// legacy transfer key, by T's value: a transient parent, authorized by an
// HMAC session.
func review80LoadUnderLegacyT(cmd []byte) bool {
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad || len(cmd) < 22 {
		return false
	}
	parent := binary.BigEndian.Uint32(cmd[10:14])
	session := binary.BigEndian.Uint32(cmd[18:22])
	return parent>>24 == 0x80 && session>>24 == 0x02
}

// FLAW (failed before the mend: exit 1; mended: refusedValue keeps a
// refusal forged once a command was sent again for a warning): review 79's refusedValue hides a forged warning at the load under
// a legacy transfer key. Attacker: A1 on the receiver's bus. Steps: a key
// received under a legacy T (made before review 74: LoadWithAuth loads
// under it by T's value, in an HMAC session salted to the SRK); a sign
// with its cache dropped; A1 passes the TPM2_Load under T on (the TPM
// loads the key and rolls the session's nonce) and answers TPM_RC_RETRY
// in the TPM's place; the channel sends the same bytes again, and the TPM
// refuses the copy's HMAC (computed with the nonce it has rolled past):
// TPM_RC_BAD_AUTH at session 1. guarded called that forged; refusedValue
// now strips every BAD_AUTH of that session of its forged verdict, with no
// look at the resend: measured exit 1 (refusedValue's Wrap of the bare
// TPMFmt1Error loses even the bad-auth kind: TestReview80WrongTransfer
// ValueAtLoadIsExit11), and with that fixed it would be exit 11, "check
// the value": the copy of a command that ran, answered for the TPM by A1,
// reported as anything but the bus. Under the new T's policy path the
// same forgery is exit 15 (usedPolicy: TestReview77ForgedRetryOnTheLoadUnderT),
// so one forgery gives two verdicts by the kind of T. Mend: in
// LoadWithAuth's HMAC path, as in its policy path, a refusal after a
// command was sent again since the load began (t.Stats().Retries moved) is
// ErrResponseForged; refusedValue only for a refusal of the first copy.
func TestReview80ForgedRetryAtTheLegacyLoadIsBadAuth(t *testing.T) {
	t.Parallel()
	bus := &swtpmtest.Bus{}
	envB, a, b, _, _ := review77LegacyReceiver(t, swtpmtest.WithBus(bus))
	ran := 0
	done := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !review80LoadUnderLegacyT(cmd) {
			return nil, nil, false
		}
		ran++
		if done {
			return nil, nil, false
		}
		done = true
		if _, err := next.Send(cmd); err != nil {
			return nil, err, true
		}
		return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
	})
	err := review77Sign(t, b, "old")
	bus.Set(nil)
	t.Logf("load under the legacy T sent %d times: %v (exit %d)", ran, err, api.ExitCode(err))
	if ran < 2 {
		t.Fatalf("the load under the legacy T was not sent again (%d): %v", ran, err)
	}
	if err == nil {
		t.Fatal("signed")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("a forged RETRY after the TPM loaded under the legacy T: exit %d, want forged (exit %d), as under the new T", api.ExitCode(err), api.ExitIdentity)
	}
	if err := b.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM: %v (%v)", left, err)
	}
	if err := review77Sign(t, b, "old"); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
	_ = a
}

// FLAW (failed before the mend: exit 1; mended: the refusal classified
// from its response code, exit 11): review 79's own mend does not give the verdict it documents.
// refusedValue re-wraps the BAD_AUTH of a load under T as
// tpm.Wrap(command, f1), with f1 the bare tpm2.TPMFmt1Error; Wrap
// classifies only a tpm2.TPMRC, so the error carries no kind at all:
// exit 1, "anything not listed", not exit 11 (tpm_bad_auth) as the threat
// model's review-79 row ("a refused value at a load under T is exit 11 ...
// as at the import") and refusedValue's comment say, and not what the
// import under the same T says (exit 11). Attacker: none needed, A4 or A6
// editing the transfer key's value in the state (review 79's own case),
// or A1 changing the load under T on the bus. Steps: a key received under
// the new T (its policy path), and one under a legacy T (its HMAC path);
// T's value changed in the state; a sign of each. Review 79's test
// (TestReview79WrongTransferValueInTheStateIsForgedAtLoad) checked only
// "not 15" and logged exit 1. Mend: build the classified error (Wrap of
// the TPMRC the Fmt1 error carries, e.g. tpm2.TPMRC(f1 code) or
// &Error{RC: ..., Kind: ErrBadAuth}), and test for exit 11.
func TestReview80WrongTransferValueAtLoadIsExit11(t *testing.T) {
	t.Parallel()
	for _, legacy := range []bool{false, true} {
		name := "new T"
		if legacy {
			name = "legacy T"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var b *Agent
			key := "k"
			if legacy {
				_, _, b, _, _ = review77LegacyReceiver(t)
				key = "old"
			} else {
				var dup api.DupFile
				_, b, _, _, dup = movedKey(t)
				if _, err := b.DupImport(context.Background(), api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
					t.Fatal(err)
				}
			}
			good := review79TransferAuth(t, b)
			review79SetTransferAuth(t, b, hex.EncodeToString(bytes.Repeat([]byte{0x5a}, objectAuthSize)))
			err := review79Sign(t, b, key)
			t.Logf("sign under %s with T's value changed in the state: %v (exit %d)", name, err, api.ExitCode(err))
			if err == nil {
				t.Fatal("signed with a wrong value")
			}
			if api.ExitCode(err) != api.ExitBadAuth || !errors.Is(err, tpm.ErrBadAuth) {
				t.Errorf("a wrong transfer-key value at the load under T: exit %d, want %d (tpm_bad_auth), as the import under T and the threat model say", api.ExitCode(err), api.ExitBadAuth)
			}
			review79SetTransferAuth(t, b, good)
			if err := review79Sign(t, b, key); err != nil {
				t.Fatalf("the sign with the value put back: %v", err)
			}
		})
	}
}
