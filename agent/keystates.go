package agent

import "github.com/provd/provd/store"

// keyStates keeps what key uses read from the state (useKeyState: the PK's
// inputs parsed, with the officer's key and the signed policy; each key's
// record, and its blob checked against the manifest) for the one committed
// state they were read from. A warm sign used to parse the PK's and the
// key's records, read and hash two blobs and parse the officer's key on
// every request, inside the agent's lock (issue 14: most of the host's
// work between two requests' TPM commands).
//
// It trusts nothing across a change: every transaction still reads
// manifest.json under the store's lock and compares its bytes with the
// ones the store parsed last (store.Version), so a commit by any process,
// this one or another, is a new Version, and the first use of one drops
// every entry of the one before. The blobs are named in the manifest by
// size and SHA-256, so the same manifest names the same blob contents: a
// hit returns what reading them again would return when they are intact.
// A blob file changed on disk under an unchanged manifest is caught when
// the key is loaded from it again, as before, not at every use of a key
// already loaded (docs/threat-model.md).
//
// Guarded by the Agent's lock, like everything an operation touches.
type keyStates struct {
	ver  store.Version
	keys map[string]keyState
}

// get returns name's state read from version v, if it is kept.
func (c *keyStates) get(v store.Version, name string) (keyState, bool) {
	if c.ver != v {
		c.reset()
		return keyState{}, false
	}
	ks, ok := c.keys[name]
	return ks, ok
}

// put keeps name's state ks, read from version v.
func (c *keyStates) put(v store.Version, name string, ks keyState) {
	if c.ver != v {
		c.reset()
		c.ver = v
	}
	if c.keys == nil {
		c.keys = map[string]keyState{}
	}
	// An entry replaced (the key read again for a load) takes its own
	// decoded copy of the authValue with it, cleared: every read decodes
	// its own, and the replaced one's operation has moved on to ks (found
	// by the second review of issue 14: one uncleared copy per reload).
	if old, ok := c.keys[name]; ok && !sameBytes(old.pk.auth, ks.pk.auth) {
		clear(old.pk.auth)
	}
	c.keys[name] = ks
}

// sameBytes says whether a and b are the one buffer.
func sameBytes(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && &a[0] == &b[0]
}

// reset drops every entry, and clears the authValues they held (the
// objects' under the PK, shared by every entry of one version; an
// operation that used them has ended: the Agent's lock).
func (c *keyStates) reset() {
	for _, ks := range c.keys {
		clear(ks.pk.auth)
	}
	c.ver, c.keys = store.Version{}, nil
}
