package server

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provd/provd/api"
)

// limitedListener accepts at most maxConnsPerCaller connections of one
// caller (its uid, from the kernel's peer credentials, read here once for
// the connection: withCaller takes them from the limitedConn), at most
// maxConns of callers with no role, and maxConnsAll in all at once: a
// caller cannot hold the descriptors every other caller and the daemon's
// own opens need (review 54), and callers with no role, of however many
// uids, leave room for those with one (review 55: four uids locked root
// out). A connection past a bound is answered busy (503, the daemon's
// error form) by one of at most maxBusyAnswers goroutines, which reads the
// request's head first so that the answer is not lost to a reset (review
// 55: closed unanswered, a heavy client saw a transport error, not busy);
// past them it is closed. A connection whose credentials cannot be read
// counts as uid -1's, with no role.
type limitedListener struct {
	net.Listener
	log *slog.Logger
	// hasRole says whether a caller holds a role now (the roles can be
	// reloaded: a connection keeps what it was counted as).
	hasRole func(Caller) bool
	// busy is the answer to a connection past a bound.
	busy []byte

	mu       sync.Mutex
	byUID    map[int]int
	roleless int
	total    int
	refused  atomic.Int64
	answers  atomic.Int64
}

// The connection bounds (see limitedListener); provd.service's
// LimitNOFILE= leaves room above maxConnsAll for the daemon's own files.
const (
	maxConnsPerCaller = 256
	maxConns          = 1024
	maxConnsAll       = 4096
	maxBusyAnswers    = 32
	// busyAnswerTime bounds a busy answer's read of the request head and
	// of what follows it.
	busyAnswerTime = time.Second
)

// errTooManyConns is a busy answer's error.
var errTooManyConns = fmt.Errorf("%w: the daemon holds as many connections as it takes (%d of one caller, %d of callers with no role, %d in all); try again", api.ErrBusy, maxConnsPerCaller, maxConns, maxConnsAll)

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		caller, cerr := PeerCredentials(c)
		uid, role := caller.UID, false
		if cerr != nil {
			uid = -1
		} else {
			role = l.hasRole(caller)
		}
		if l.take(uid, role) {
			return &limitedConn{Conn: c, caller: callerResult{caller, cerr}, release: func() { l.give(uid, role) }}, nil
		}
		// Logged at the first, second, fourth... refusal: a flood of them
		// does not flood the journal.
		if n := l.refused.Add(1); n&(n-1) == 0 {
			l.log.Warn("connection refused: too many held", "caller_uid", uid, "role", role, "refused_so_far", n)
		}
		if l.answers.Add(1) > maxBusyAnswers {
			l.answers.Add(-1)
			c.Close()
			continue
		}
		go l.answerBusy(c)
	}
}

// answerBusy reads the request's head on c (bounded in size and time),
// answers it busy, and reads what follows until the client closes or the
// time is up, then closes c.
func (l *limitedListener) answerBusy(c net.Conn) {
	defer l.answers.Add(-1)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(busyAnswerTime))
	br := bufio.NewReader(io.LimitReader(c, maxHeaderBytes))
	for {
		line, err := br.ReadString('\n')
		if err != nil || line == "\r\n" || line == "\n" {
			break
		}
	}
	if _, err := fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(l.busy), l.busy); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, MaxRequestBody))
}

// take counts a connection of uid, or says it is one too many.
func (l *limitedListener) take(uid int, role bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxConnsAll || l.byUID[uid] >= maxConnsPerCaller || (!role && l.roleless >= maxConns) {
		return false
	}
	if l.byUID == nil {
		l.byUID = map[int]int{}
	}
	l.total++
	l.byUID[uid]++
	if !role {
		l.roleless++
	}
	return true
}

// give undoes take once the connection closes.
func (l *limitedListener) give(uid int, role bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if !role {
		l.roleless--
	}
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
