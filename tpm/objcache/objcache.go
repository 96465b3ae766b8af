// Package objcache keeps TPM objects ready between uses, for a process that
// lives (provd's daemon): a key used again is not loaded or derived again.
//
// It exists because a TPM without a resource manager (swtpm, /dev/tpm0) has
// three transient object slots, and provd's other operations need up to
// three of them (the PK, a child, a policy signer's key during
// PolicyAuthorize). So at most MaxResident objects (two: a key use needs
// at most one slot more, for a policy signer's key or for the SRK, which the
// TPM loads into a slot to start a session salted to it) stay loaded
// between calls; an operation that may need two slots more (an HMAC
// sequence, which then starts salted sessions; an audit record, which loads
// the gate key) first trims the cache to one (Trim), and a key use that
// runs out of slots before its command evicts and tries once more (another
// client's object may hold one); the others are context-saved (TPM2_ContextSave:
// encrypted and integrity-protected by the TPM, useless elsewhere and after a
// TPM reset) and loaded again with one TPM2_ContextLoad. A saved context is
// kept while its object is loaded again (the TPM loads an object's context as
// often as asked), so evicting that object again costs only its flush. The
// least recently used resident object makes room for another. An operation
// that needs every slot calls EvictResident first, so the cache never holds a
// slot another operation needs.
//
// The cache holds no authority: a cached object is only a handle. Whoever
// uses one still satisfies its policy in a fresh session, so caching changes
// the command count, never what the TPM allows.
//
// A Cache is not safe for concurrent use: its owner (the agent, which runs
// one operation at a time) serializes calls, since every call may send TPM
// commands on the owner's one connection.
package objcache

import (
	"errors"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/tpm"
)

// Defaults of Options.
const (
	DefaultMaxResident = 2
	DefaultMaxSaved    = 64
)

// Options bound a Cache; zero values take the defaults.
type Options struct {
	// MaxResident objects stay loaded between calls.
	MaxResident int
	// MaxSaved saved contexts are kept (they cost host memory only); the
	// least recently used go first.
	MaxSaved int
}

// Cache holds objects by name (the owner's: a key's name), each with an id
// that says which object it is (the owner's: the parent's and the object's
// TPM names), so that a name that now means another object is never served
// the old one.
type Cache struct {
	t       *tpm.TPM
	opts    Options
	entries map[string]*entry
	order   []string // least recently used first
	// gen is the TPM's generation when the resident handles were last
	// known to name their objects (tpm.TPM.Generation).
	gen uint64
}

type entry struct {
	id       string
	obj      tpm.Object
	resident bool              // obj.Handle is loaded
	saved    *tpm2.TPMSContext // its saved context, once saved (kept while resident)
}

// New returns an empty cache for t.
func New(t *tpm.TPM, opts Options) *Cache {
	if opts.MaxResident <= 0 {
		opts.MaxResident = DefaultMaxResident
	}
	if opts.MaxSaved <= 0 {
		opts.MaxSaved = DefaultMaxSaved
	}
	return &Cache{t: t, opts: opts, entries: map[string]*entry{}, gen: t.Generation()}
}

// recheck runs when the TPM's generation has moved (a new connection, or a
// TPM that provd started up after a power cycle): a resident handle may be
// gone, or name an object someone else loaded at its number while provd was
// away (found by review: a command sent there failed the authorization of
// that object, counted toward the TPM's lockout, and kept failing). Each
// resident handle is read back (TPM2_ReadPublic) and kept only if it names
// the object cached; the others are forgotten, never flushed (not provd's).
// Saved contexts need no check: the TPM loads only the contexts it saved.
func (c *Cache) recheck() {
	gen := c.t.Generation()
	if gen == c.gen {
		return
	}
	for n, e := range c.entries {
		if !e.resident {
			continue
		}
		o, err := c.t.ReadPublic(e.obj.Handle)
		if err != nil || string(o.Name.Buffer) != string(e.obj.Name.Buffer) {
			c.Forget(n)
			c.t.Unheld() // the answer has no HMAC: if forged, the sweep flushes it
		}
	}
	c.gen = gen
}

// Get returns the object cached as name when it is the object id names,
// resident: already loaded, or loaded back from its saved context (after
// making room). ok is false when there is none to serve: never cached, cached
// for another id (that entry is dropped, its handle flushed: forgetting a
// loaded object would leak its slot), or a saved context the TPM no longer
// takes (saved before a TPM reset: TPM_RC_INTEGRITY). The caller then loads
// the object and Puts it. The returned object stays the cache's.
func (c *Cache) Get(name, id string) (obj tpm.Object, ok bool, err error) {
	c.recheck()
	e := c.entries[name]
	if e == nil {
		return obj, false, nil
	}
	if e.id != id {
		return obj, false, c.Drop(name)
	}
	if e.resident {
		c.touch(name)
		return e.obj, true, nil
	}
	if err := c.makeRoom(); err != nil {
		return obj, false, err
	}
	h, err := c.t.ContextLoad(*e.saved)
	if err != nil {
		c.Forget(name)
		return obj, false, nil
	}
	if c.holds(h) {
		// The TPM gives a loaded object's handle to nothing else: the
		// answer was forged, and the object it loaded is nobody's (found
		// by review).
		c.Forget(name)
		c.t.Unheld()
		return obj, false, nil
	}
	e.obj.Handle, e.resident = h, true
	c.touch(name)
	return e.obj, true, nil
}

// Put records obj, loaded, as the resident copy of name; the cache owns its
// handle from now on. Any other entry claiming the same handle is stale (its
// object was flushed behind the cache's back, e.g. by a TPM reset) and loses
// it.
func (c *Cache) Put(name, id string, obj tpm.Object) {
	c.claim(name, obj.Handle)
	c.entries[name] = &entry{id: id, obj: obj, resident: true}
	c.touch(name)
	for len(c.entries) > c.opts.MaxSaved {
		i := slices.IndexFunc(c.order, func(n string) bool { return !c.entries[n].resident })
		if i < 0 {
			break
		}
		delete(c.entries, c.order[i])
		c.order = slices.Delete(c.order, i, i+1)
	}
}

// holds reports whether a resident entry holds handle h.
func (c *Cache) holds(h tpm2.TPMHandle) bool {
	for _, e := range c.entries {
		if e.resident && e.obj.Handle == h {
			return true
		}
	}
	return false
}

// claim forgets every entry but name that holds handle h loaded: its object
// was flushed behind the cache's back (a TPM reset), since the TPM gave h
// to another.
func (c *Cache) claim(name string, h tpm2.TPMHandle) {
	for n, e := range c.entries {
		if n != name && e.resident && e.obj.Handle == h {
			c.Forget(n)
			c.t.Unheld() // unless the handle came forged: then the sweep flushes it
		}
	}
}

// EvictResident context-saves (once) and flushes every resident object,
// freeing their slots. An object whose context cannot be saved is flushed
// and forgotten.
func (c *Cache) EvictResident() error {
	c.recheck()
	var errs []error
	for _, n := range slices.Clone(c.order) {
		if err := c.evict(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// evict frees name's slot, if it holds one: its context saved unless saved
// already, then flushed.
func (c *Cache) evict(name string) error {
	e := c.entries[name]
	if e == nil || !e.resident {
		return nil
	}
	if e.saved == nil {
		s, err := c.t.ContextSave(e.obj.Handle)
		if err == nil {
			e.saved = &s
		}
	}
	e.resident = false
	if e.saved == nil {
		c.Forget(name)
	}
	if err := c.t.Flush(e.obj.Handle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
		return err
	}
	return nil
}

// Trim evicts the least recently used resident objects until at most n
// stay loaded.
func (c *Cache) Trim(n int) error {
	c.recheck()
	for _, name := range slices.Clone(c.order) {
		if c.Resident() <= n {
			return nil
		}
		if err := c.evict(name); err != nil {
			return err
		}
	}
	return nil
}

// makeRoom evicts the least recently used resident objects until one more
// fits MaxResident.
func (c *Cache) makeRoom() error {
	c.recheck()
	for _, n := range slices.Clone(c.order) {
		if c.Resident() < c.opts.MaxResident {
			return nil
		}
		if err := c.evict(n); err != nil {
			return err
		}
	}
	return nil
}

// Drop forgets name, flushing its object when resident.
func (c *Cache) Drop(name string) error {
	e := c.entries[name]
	c.Forget(name)
	if e != nil && e.resident {
		if err := c.t.Flush(e.obj.Handle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
			return err
		}
	}
	return nil
}

// Forget drops name without touching the TPM: its handle is gone already.
func (c *Cache) Forget(name string) {
	delete(c.entries, name)
	c.order = slices.DeleteFunc(c.order, func(n string) bool { return n == name })
}

// Close flushes every resident object and forgets everything.
func (c *Cache) Close() error {
	c.recheck()
	var errs []error
	for n := range c.entries {
		if err := c.Drop(n); err != nil {
			errs = append(errs, err)
		}
	}
	c.entries, c.order = map[string]*entry{}, nil
	return errors.Join(errs...)
}

// Handles lists the handles the cache holds loaded.
func (c *Cache) Handles() []tpm2.TPMHandle {
	var hs []tpm2.TPMHandle
	for _, e := range c.entries {
		if e.resident {
			hs = append(hs, e.obj.Handle)
		}
	}
	return hs
}

// Names lists the cached names, least recently used first.
func (c *Cache) Names() []string { return slices.Clone(c.order) }

// Resident reports how many objects the cache holds loaded.
func (c *Cache) Resident() int {
	n := 0
	for _, e := range c.entries {
		if e.resident {
			n++
		}
	}
	return n
}

func (c *Cache) touch(name string) {
	c.order = slices.DeleteFunc(c.order, func(n string) bool { return n == name })
	c.order = append(c.order, name)
}
