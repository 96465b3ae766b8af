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
// maxConns of callers with no role, maxUserConns of callers with the user
// role alone, and maxConnsAll in all at once: a caller cannot hold the
// descriptors every other caller and the daemon's own opens need (review
// 54), callers with no role, of however many uids, leave room for those
// with one (review 55: four uids locked root out), and user-role callers
// leave room for the crypto officer (review 56: sixteen user-role uids,
// one user's subordinate ids, locked the officer out). A connection past a
// bound is answered busy (503, the daemon's error form) by one of at most
// maxBusyAnswers goroutines, maxBusyAnswersPerCaller of them one
// caller's, which reads the request's head first so that the answer is
// not lost to a reset (review 55: closed unanswered, a heavy client saw a
// transport error, not busy; review 56: one caller took every answerer);
// past them it is closed. A connection whose credentials cannot be read
// counts as uid -1's, with no role.
type limitedListener struct {
	net.Listener
	log *slog.Logger
	// roleOf is a caller's role now (the roles can be reloaded: a
	// connection keeps what it was counted as).
	roleOf func(Caller) Role
	// busy is the answer to a connection past a bound.
	busy []byte

	mu        sync.Mutex
	byUID     map[int]int
	byClass   [3]int // connClass
	total     int
	answers   int
	answersOf map[int]int
	refused   atomic.Int64
}

// A connClass is what bounds a connection besides its caller's and the
// total: no role, the user role alone, or the crypto officer's.
type connClass int

const (
	noRole connClass = iota
	userOnly
	officerRole
)

// classOf is the class of a caller with role r.
func classOf(r Role) connClass {
	switch {
	case r&RoleOfficer != 0:
		return officerRole
	case r&RoleUser != 0:
		return userOnly
	}
	return noRole
}

// classBound is each class's bound: the officer's only the total's.
var classBound = [3]int{noRole: maxConns, userOnly: maxUserConns, officerRole: maxConnsAll}

// The connection bounds (see limitedListener); provd.service's
// LimitNOFILE= leaves room above maxConnsAll for the daemon's own files.
const (
	maxConnsPerCaller       = 256
	maxConns                = 1024
	maxUserConns            = 2048
	maxConnsAll             = 4096
	maxBusyAnswers          = 32
	maxBusyAnswersPerCaller = 2
	// busyAnswerTime bounds a busy answer's read of the request head and
	// of what follows it.
	busyAnswerTime = time.Second
)

// errTooManyConns is a busy answer's error.
var errTooManyConns = fmt.Errorf("%w: the daemon holds as many connections as it takes (%d of one caller, %d of callers with no role, %d of user-role callers, %d in all); try again", api.ErrBusy, maxConnsPerCaller, maxConns, maxUserConns, maxConnsAll)

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		caller, cerr := PeerCredentials(c)
		uid, class := caller.UID, noRole
		if cerr != nil {
			uid = -1
		} else {
			class = classOf(l.roleOf(caller))
		}
		if l.take(uid, class) {
			return &limitedConn{Conn: c, caller: callerResult{caller, cerr}, release: func() { l.give(uid, class) }}, nil
		}
		// Logged at the first, second, fourth... refusal: a flood of them
		// does not flood the journal.
		if n := l.refused.Add(1); n&(n-1) == 0 {
			l.log.Warn("connection refused: too many held", "caller_uid", uid, "class", int(class), "refused_so_far", n)
		}
		if !l.takeAnswer(uid) {
			c.Close()
			continue
		}
		go l.answerBusy(c, uid)
	}
}

// answerBusy reads the request's head on c (bounded in size and time),
// answers it busy, and reads what follows until the client closes or the
// time is up, then closes c.
func (l *limitedListener) answerBusy(c net.Conn, uid int) {
	defer l.giveAnswer(uid)
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

// take counts a connection of uid in class, or says it is one too many.
func (l *limitedListener) take(uid int, class connClass) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxConnsAll || l.byUID[uid] >= maxConnsPerCaller || l.byClass[class] >= classBound[class] {
		return false
	}
	if l.byUID == nil {
		l.byUID = map[int]int{}
	}
	l.total++
	l.byUID[uid]++
	l.byClass[class]++
	return true
}

// give undoes take once the connection closes.
func (l *limitedListener) give(uid int, class connClass) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	l.byClass[class]--
	if l.byUID[uid]--; l.byUID[uid] == 0 {
		delete(l.byUID, uid)
	}
}

// takeAnswer counts a busy answer for uid, or says there is none free.
func (l *limitedListener) takeAnswer(uid int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.answers >= maxBusyAnswers || l.answersOf[uid] >= maxBusyAnswersPerCaller {
		return false
	}
	if l.answersOf == nil {
		l.answersOf = map[int]int{}
	}
	l.answers++
	l.answersOf[uid]++
	return true
}

// giveAnswer undoes takeAnswer.
func (l *limitedListener) giveAnswer(uid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers--
	if l.answersOf[uid]--; l.answersOf[uid] == 0 {
		delete(l.answersOf, uid)
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

// CloseWrite half-closes the connection under it: Go's server does so
// before it closes a connection it answered, so that a client still
// writing reads the answer rather than a reset (the wrapper would hide
// the unix socket's own).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
