package agent

// Review 42: forgetStatePK (6f609ae): a.pk = nil and a.keys.EvictResident()
// when updateUnderPK or updatePinned refuses, inside an operation whose
// deferred flushes may still name handles.
//
// HELD: TestReview42ForgetStatePKInsideTheOperation.
// Attack (another local process, behind /dev/tpmrm0): a warm daemon O
// (KeepSession: PK context kept, "k" resident, shared and policy sessions
// kept) creates "k2"; another process zeroizes the state (--srk) before
// O's TPM2_Create, or runs provision --force before O's TPM2_ContextLoad
// of the kept PK context. O's commit is refused and forgetStatePK runs
// while withLoadedPK's deferred flush of the PK (loaded from the kept
// context) and the new key's load are still ahead or behind it. Looked
// for: a panic, a double flush (objcache.evict of a handle the operation
// flushes too), a flush of another connection's handle, anything left
// loaded, a kept PK context, and O's next operations failing. Held: no
// panic, the refusal is not_provisioned (exit 13) / state_changed (exit
// 8), nothing left loaded or held by nobody (objects and sessions), a.pk
// is nil, O's next operations work (under the new PK for provision
// --force; after a provision of its own for the zeroize). By reading:
// every caller of updateUnderPK/updatePinned has already emptied the
// cache's resident slots (EvictResident) or loads nothing from it
// (policy install, recordD, newTransferKey, provisionFrom, newAttestKey,
// installDelivery), and the PK is never a cache entry (withLoadedPK
// flushes l.pk itself), so EvictResident there flushes nothing the
// operation still uses: no double flush is reachable.
//
// FLAW (low; failed before the mend): TestReview42ForgetStatePKKeepsTheKeysSavedContexts.
// Attack: as above. forgetStatePK is documented (pk.go, and
// docs/threat-model.md: "Such a refusal drops what the daemon kept of the
// PK (its saved context, the resident keys), as its own zeroize does").
// The daemon's own zeroize calls a.keys.Close(), which flushes and
// FORGETS every entry, saved contexts included. forgetStatePK calls
// a.keys.EvictResident(), which context-saves every resident key (a
// TPM2_ContextSave where none was saved) and keeps the saved contexts.
// Expected: after the refusal the cache holds nothing of the replaced or
// zeroized PK's keys, as after O's own zeroize. Observed: a.keys still
// names "k" with its saved context (ids of the replaced PK): a
// TPM-loadable copy of a key of a state that another process zeroized
// (or replaced), kept for the daemon's life or until a TPM reset. It is
// inert inside provd (its cache id names the old PK, so no new key is
// served it), as review 41 rated the PK's kept context: low, the same
// class, left behind by the mend meant to end it.
// Suggested mend: forgetStatePK calls a.keys.Close() (flush and forget,
// as zeroizeTPMAndState does) rather than EvictResident. Mended so.
import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// review42Refused runs a warm daemon's key create "k2" refused by
// another process's change to the state (replaced: provision --force
// before the kept PK context's TPM2_ContextLoad; else zeroize --srk
// before the key's TPM2_Create) and returns the daemon, its TPM and the
// create's error.
func review42Refused(t *testing.T, replaced bool) (*swtpmtest.Env, *Agent, string, error) {
	t.Helper()
	env, o, _, err := review42RefusedK(t, replaced)
	return env, o, "", err
}

// review42RefusedK is review42Refused with "k"'s record from before.
func review42RefusedK(t *testing.T, replaced bool) (*swtpmtest.Env, *Agent, keyRecord, error) {
	t.Helper()
	ctx := context.Background()
	env, bz, o, w, dir := review41Daemon(t)
	if o.pk == nil || o.keys.Resident() == 0 {
		t.Fatalf("not warm: kept PK context %v, %d keys resident", o.pk != nil, o.keys.Resident())
	}
	var k keyRecord
	if err := o.st.View(ctx, func(tx *store.Tx) error { return tx.Get(keyRecName("k"), &k) }); err != nil {
		t.Fatal(err)
	}
	done := false
	if replaced {
		ptp, _ := review8Client(t, w)
		bz.Set(review41ForceProvisionAt(t, ptp, dir, tpm2.TPMCCContextLoad, &done, nil))
	} else {
		bz.Set(review39ZeroizeOnce(t, dir, tpm2.TPMCCCreate, &done))
	}
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("panic in the refused key create: %v", r)
			}
		}()
		_, err = o.CreateKey(ctx, review41KeyReq("k2"))
	}()
	bz.Set(nil)
	if !done {
		t.Fatalf("not mounted (%v)", err)
	}
	t.Logf("warm daemon key create refused: %v (exit %d, kinds %v)", err, api.ExitCode(err), api.ErrorKinds(err))
	return env, o, k, err
}

func TestReview42ForgetStatePKInsideTheOperation(t *testing.T) {
	for _, replaced := range []bool{false, true} {
		name := "zeroize"
		if replaced {
			name = "provision-force"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			env, o, _, err := review42Refused(t, replaced)
			want, code := api.ErrNotProvisioned, api.ExitNotProvisioned
			if replaced {
				want, code = api.ErrStateChanged, api.ExitState
			}
			if !errors.Is(err, want) || api.ExitCode(err) != code {
				t.Errorf("want %v (exit %d): %v (exit %d)", want, code, err, api.ExitCode(err))
			}
			if o.pk != nil {
				t.Errorf("the daemon keeps a PK context after the refusal")
			}
			review42Leftovers(t, env, o, "the refused key create")
			if !replaced {
				if _, err := o.Provision(ctx, review8Req()); err != nil {
					t.Fatalf("O's provision after the zeroize: %v", err)
				}
			}
			review41GoesOn(t, o)
			review42Leftovers(t, env, o, "the next operations")
		})
	}
}

func TestReview42ForgetStatePKKeepsTheKeysSavedContexts(t *testing.T) {
	t.Parallel()
	for _, replaced := range []bool{false, true} {
		name := "zeroize"
		if replaced {
			name = "provision-force"
		}
		t.Run(name, func(t *testing.T) {
			env, o, k, err := review42RefusedK(t, replaced)
			if err == nil {
				t.Fatal("not refused")
			}
			names := o.keys.Names()
			t.Logf("after the refusal: kept PK context %v; the key cache names %q (%d resident)", o.pk != nil, names, o.keys.Resident())
			// An entry not resident is one with a saved context
			// (objcache.evict forgets an entry whose save failed).
			if len(names) > o.keys.Resident() {
				t.Errorf("after the refusal (forgetStatePK) the daemon keeps %d saved key contexts (%q), keys of the state before the %s; "+
					"its own zeroize forgets them (a.keys.Close)", len(names)-o.keys.Resident(), names, name)
			}
			// Still loadable: the cache serves it for the old id.
			if obj, ok, err := o.keys.Get("k", k.cacheID()); err == nil && ok {
				t.Logf("the kept context of \"k\" loads: 0x%08x, name %x", uint32(obj.Handle), obj.Name.Buffer)
				if err := o.keys.Drop("k"); err != nil {
					t.Fatal(err)
				}
			}
			review42Leftovers(t, env, o, "the check")
		})
	}
	// Control: the daemon's own zeroize forgets them.
	t.Run("control-own-zeroize", func(t *testing.T) {
		_, _, o, _, _ := review41Daemon(t)
		if _, err := o.Zeroize(context.Background(), api.ZeroizeOptions{SRK: true}); err != nil {
			t.Fatal(err)
		}
		if names := o.keys.Names(); len(names) != 0 {
			t.Errorf("control: after the daemon's own zeroize the cache names %q", names)
		}
	})
}
