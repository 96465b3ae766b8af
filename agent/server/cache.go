package server

import (
	"sync"
	"time"
)

// statusTTL is how long status and policy show answer from their last
// result. Monitoring polls them (either role may), and each one otherwise
// context-saves the hot key, loads the PK and runs a policy session, and
// verifies the whole audit trail. A second is stale enough for a monitor.
const statusTTL = time.Second

// cacheable are the operations readCache answers: read-only, secret-free
// (nothing to wipe) and the same for every caller.
var cacheable = map[string]bool{"status": true, "policy-show": true}

// readCache keeps the last result of each cacheable operation for
// statusTTL, and drops them all when any other operation runs through the
// queue (it may change what they show: keys, policy, audit trail). What
// changes outside the daemon (PCRs extended, an in-process provd on the same
// state) shows within statusTTL.
type readCache struct {
	mu      sync.Mutex
	ttl     time.Duration // statusTTL; tests change it
	gen     uint64        // operations run that may change what the reads show
	entries map[string]cacheEntry
}

type cacheEntry struct {
	gen uint64
	at  time.Time
	val any
}

// get returns op's result if it is cacheable, fresh, and nothing ran since.
func (c *readCache) get(op string) (any, bool) {
	if !cacheable[op] {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[op]
	ttl := c.ttl
	if ttl == 0 {
		ttl = statusTTL
	}
	if age := time.Since(e.at); !ok || e.gen != c.gen || age < 0 || age >= ttl {
		return nil, false
	}
	return e.val, true
}

// put keeps a cacheable op's result.
func (c *readCache) put(op string, val any) {
	if !cacheable[op] {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]cacheEntry{}
	}
	c.entries[op] = cacheEntry{gen: c.gen, at: time.Now(), val: val}
}

// running notes that op runs now, in the queue: any operation but the
// cacheable reads drops what the cache holds.
func (c *readCache) running(op string) {
	if cacheable[op] {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
}
