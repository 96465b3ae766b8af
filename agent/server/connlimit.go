package server

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
)

// limitedListener accepts at most maxConnsPerCaller connections of one
// caller (its uid, from the kernel's peer credentials, read here once for
// the connection: withCaller takes them from the limitedConn) and maxConns
// in all at once, and closes any past them as soon as it accepts it: a
// caller cannot hold the descriptors every other caller and the daemon's
// own opens need (review 54). A connection whose credentials cannot be
// read counts as uid -1's.
type limitedListener struct {
	net.Listener
	log *slog.Logger

	mu      sync.Mutex
	byUID   map[int]int
	total   int
	refused atomic.Int64
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		caller, cerr := PeerCredentials(c)
		uid := caller.UID
		if cerr != nil {
			uid = -1
		}
		if l.take(uid) {
			return &limitedConn{Conn: c, caller: callerResult{caller, cerr}, release: func() { l.give(uid) }}, nil
		}
		c.Close()
		// Logged at the first, second, fourth... refusal: a flood of them
		// does not flood the journal.
		if n := l.refused.Add(1); n&(n-1) == 0 {
			l.log.Warn("connection refused: too many held", "caller_uid", uid, "per_caller", maxConnsPerCaller, "in_all", maxConns, "refused_so_far", n)
		}
	}
}

// take counts a connection of uid, or says it is one too many.
func (l *limitedListener) take(uid int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxConns || l.byUID[uid] >= maxConnsPerCaller {
		return false
	}
	l.total++
	l.byUID[uid]++
	return true
}

// give undoes take once the connection closes.
func (l *limitedListener) give(uid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.byUID[uid]--; l.byUID[uid] == 0 {
		delete(l.byUID, uid)
	}
}

// limitedConn is an accepted connection with the credentials read at
// accept; it gives its place back when closed, once.
type limitedConn struct {
	net.Conn
	caller  callerResult
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
