package agent

import (
	"crypto/sha256"
	"errors"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// The key cache keeps operational keys ready between uses, for a process that
// lives (the daemon); a CLI run does one operation and Close flushes.
//
// A TPM without a resource manager (swtpm, /dev/tpm0) has 3 transient object
// slots, and provd's other operations need up to 3 of them (PK, a child, the
// policy signer's key during PolicyAuthorize). So at most maxResident keys
// stay loaded between calls; the others are context-saved (TPM2_ContextSave:
// encrypted and integrity-protected by the TPM, useless elsewhere and after a
// TPM reset) and loaded again with one TPM2_ContextLoad. Every operation that
// loads the PK first evicts resident keys (withPK calls evictResident), so the
// cache never takes a slot another operation needs.
//
// The cache holds no authority: every use of a key runs the key's policy (the
// PK's PCR policy) in a fresh session, so a cached key stops working the
// moment the platform stops satisfying the policy.
type keyCache struct {
	mu      sync.Mutex
	entries map[string]*cacheEntry // by key name
	order   []string               // least recently used first
	signed  signedCache
}

// signedCache keeps the installed signed policy parsed and verified (its
// ECDSA or RSA signature checked in software), by the SHA-256 of its
// bytes: every operation under a signed PK policy reads the blob again, and
// the same bytes always parse to the same verified policy, so a hit is
// exactly what parsing would return. A new blob (policy install) has
// another hash; install also resets it. The TPM's part (LoadExternal,
// VerifySignature, PolicyAuthorize in each session) is not cached: the
// verification ticket would be sound to keep only as long as the owner
// hierarchy's proof, which TPM2_Clear changes, and provd does not track that.
type signedCache struct {
	mu  sync.Mutex
	sum [sha256.Size]byte
	sp  *policy.SignedPolicy
}

// parse returns b parsed and verified, from the cache when b was the last
// blob parsed.
func (c *signedCache) parse(b []byte) (*policy.SignedPolicy, error) {
	sum := sha256.Sum256(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sp != nil && c.sum == sum {
		return c.sp, nil
	}
	sp, err := policy.ParseSignedPolicy(b)
	if err != nil {
		return nil, err
	}
	c.sum, c.sp = sum, sp
	return sp, nil
}

func (c *signedCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sp = nil
}

type cacheEntry struct {
	pk      string // hex PK name the key belongs to
	objName string // hex TPM name
	obj     tpm.Object
	saved   *tpm2.TPMSContext // when not resident
}

const (
	// maxResident keys stay loaded between calls.
	maxResident = 1
	// maxSaved saved contexts are kept (they cost host memory only).
	maxSaved = 64
)

func (c *keyCache) touch(name string) {
	c.order = slices.DeleteFunc(c.order, func(n string) bool { return n == name })
	c.order = append(c.order, name)
}

// lookup returns the entry for name when it is the key rec describes. An
// entry for another key (the record was replaced: deleted and made again
// by another process, a new PK) is dropped, its handle flushed when it is
// resident: forgetting a loaded object would leak its slot.
func (c *keyCache) lookup(t *tpm.TPM, name string, rec keyRecord) (*cacheEntry, error) {
	e := c.entries[name]
	if e == nil {
		return nil, nil
	}
	if e.pk != rec.PK || e.objName != rec.Object {
		return nil, c.drop(t, name)
	}
	return e, nil
}

// put records obj (loaded) as the resident copy of key name. Any other
// entry claiming the same handle is stale (its object was flushed behind the
// cache's back, e.g. by a TPM reset) and loses its handle.
func (c *keyCache) put(t *tpm.TPM, name string, rec keyRecord, obj tpm.Object) {
	if c.entries == nil {
		c.entries = map[string]*cacheEntry{}
	}
	for n, e := range c.entries {
		if n != name && e.saved == nil && e.obj.Handle == obj.Handle {
			c.forget(n)
		}
	}
	c.entries[name] = &cacheEntry{pk: rec.PK, objName: rec.Object, obj: obj}
	c.touch(name)
	// Bound the number of saved contexts.
	for len(c.entries) > maxSaved {
		for _, n := range c.order {
			if e := c.entries[n]; e != nil && e.saved != nil {
				delete(c.entries, n)
				c.order = slices.DeleteFunc(c.order, func(x string) bool { return x == n })
				break
			}
		}
	}
}

// evictResident context-saves and flushes every resident key, freeing their
// slots. A key whose context cannot be saved is flushed and forgotten.
func (c *keyCache) evictResident(t *tpm.TPM) error {
	var errs []error
	for n, e := range c.entries {
		if e.saved != nil {
			continue
		}
		s, err := t.ContextSave(e.obj.Handle)
		if err == nil {
			e.saved = &s
		} else {
			delete(c.entries, n)
		}
		if ferr := t.Flush(e.obj.Handle); ferr != nil && !errors.Is(ferr, tpm.ErrNotFound) {
			errs = append(errs, ferr)
		}
	}
	return errors.Join(errs...)
}

// makeRoom evicts resident keys until one more object fits the budget.
func (c *keyCache) makeRoom(t *tpm.TPM) error {
	n := 0
	for _, e := range c.entries {
		if e.saved == nil {
			n++
		}
	}
	if n < maxResident {
		return nil
	}
	return c.evictResident(t)
}

// drop forgets key name, flushing it when resident.
func (c *keyCache) drop(t *tpm.TPM, name string) error {
	e := c.entries[name]
	delete(c.entries, name)
	c.order = slices.DeleteFunc(c.order, func(n string) bool { return n == name })
	if e != nil && e.saved == nil {
		if err := t.Flush(e.obj.Handle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
			return err
		}
	}
	return nil
}

// forget drops key name without touching the TPM (its handle is gone).
func (c *keyCache) forget(name string) {
	delete(c.entries, name)
	c.order = slices.DeleteFunc(c.order, func(n string) bool { return n == name })
}

// closeAll flushes every resident key and forgets everything.
func (c *keyCache) closeAll(t *tpm.TPM) error {
	var errs []error
	for n := range c.entries {
		if err := c.drop(t, n); err != nil {
			errs = append(errs, err)
		}
	}
	c.entries, c.order = nil, nil
	return errors.Join(errs...)
}

// evictKeys context-saves the keys the cache holds loaded, so that an
// operation that needs every TPM object slot can run. withPK does it; other
// code that loads objects outside withPK calls it first.
func (a *Agent) evictKeys() error {
	a.keys.mu.Lock()
	defer a.keys.mu.Unlock()
	return a.keys.evictResident(a.t)
}

// closeKeys flushes cached keys (Close, zeroize).
func (a *Agent) closeKeys() error {
	a.keys.mu.Lock()
	defer a.keys.mu.Unlock()
	return a.keys.closeAll(a.t)
}
