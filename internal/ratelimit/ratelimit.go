// Package ratelimit is provd's one token bucket: the fleet endpoint's
// limits per device and per client, and the daemon's bound on the refused
// requests it records one by one (each record is an NV write in the TPM,
// which wears, and which a TPM rate-limits itself by refusing writes).
package ratelimit

import (
	"sync"
	"time"
)

// Limiter is a token bucket per key: rate tokens a second, burst at most,
// a new key's bucket full. It keeps at most MaxBuckets keys: past them,
// full buckets are dropped, and a new key is refused while every bucket
// is in use (found by review of the fleet endpoint: random keys reset
// everyone's limits, or held memory without bound).
type Limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
	now     func() time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// MaxBuckets bounds a Limiter's memory.
const MaxBuckets = 1 << 16

// New is a Limiter of rate tokens a second, burst at most, on the clock
// now (time.Now when nil).
func New(rate, burst float64, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{rate: rate, burst: burst, buckets: map[string]*bucket{}, now: now}
}

// Allow takes a token for key, false when it has none left.
func (l *Limiter) Allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= MaxBuckets {
			l.sweep(now)
			if len(l.buckets) >= MaxBuckets {
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if now.After(b.last) { // a clock set back refills nothing
		b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep drops the buckets that are full again.
func (l *Limiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}
