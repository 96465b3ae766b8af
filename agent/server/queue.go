package server

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provd/provd/api"
)

// queue serializes everything that touches the TPM or the agent: one
// operation at a time, in arrival order (a channel's blocked senders are
// served first come, first served). A request waits at most until its
// context's deadline, and only so many wait (admit): at most maxWaiting
// clients' requests, of which at most perCaller are one caller's (review
// 54: one user-role caller's flood turned every other caller away busy,
// the crypto officer's too), and at most maxRefusals refusals' records,
// which take no client's place (review 54: a caller with no role filled
// the queue with requests the daemon refused).
type queue struct {
	slot chan struct{}
	// waiting counts the requests of every kind waiting for the slot.
	waiting atomic.Int64

	mu         sync.Mutex
	clients    int64         // clients' requests waiting
	byUID      map[int]int64 // of them, each caller's
	refusals   int64         // refusals' records waiting
	maxWaiting int64
	perCaller  int64

	// since is when the operation holding the slot was admitted
	// (UnixNano); 0 while none holds it.
	since atomic.Int64
	// closed: the daemon is stopping; close holds the slot for good.
	closed atomic.Bool
	// stopping is closed with it, for those who wait on a timer.
	stopping  chan struct{}
	closeOnce sync.Once
	// lastRan: close ran its last function, holding the slot for good.
	lastRan atomic.Bool
}

// maxRefusals bounds the refusals' records waiting for the queue: a
// refusal past it is answered without a record of its own, and counted in
// a record of the daemon's (Server.refuse, writeRefusalCount).
const maxRefusals = 16

// A waiter is who a request waits for: a client (by uid), the record of a
// refusal, or the daemon itself (the watchdog's health check, the count of
// refusals not recorded one by one: one at a time each, bounded by nothing
// but its deadline).
type waiter struct {
	kind waiterKind
	uid  int
}

type waiterKind int

const (
	forClient waiterKind = iota
	forRefusal
	forDaemon
)

// clientOf is the waiter of a request of the caller uid.
func clientOf(uid int) waiter { return waiter{kind: forClient, uid: uid} }

var (
	refusalRecord = waiter{kind: forRefusal}
	daemonOwn     = waiter{kind: forDaemon}
)

// errStopping turns away a request admitted after close.
var errStopping = fmt.Errorf("%w: the daemon is stopping", api.ErrBusy)

// errRefusalsFull: maxRefusals refusals' records wait already.
var errRefusalsFull = fmt.Errorf("%w: %d refusals' records waiting", api.ErrBusy, maxRefusals)

// newQueue is a queue where maxWaiting clients' requests may wait, a
// quarter of them one caller's: it takes four callers to fill it, and the
// crypto officer's requests, and another user's, find a place while one
// caller floods.
func newQueue(maxWaiting int) *queue {
	return &queue{slot: make(chan struct{}, 1), maxWaiting: int64(maxWaiting),
		perCaller: max(1, int64(maxWaiting)/4), byUID: map[int]int64{}, stopping: make(chan struct{})}
}

// admit counts w among the waiting, or says why it may not wait.
func (q *queue) admit(w waiter) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch w.kind {
	case forClient:
		if q.clients >= q.maxWaiting {
			return fmt.Errorf("%w: %d requests waiting, the most the daemon lets wait", api.ErrBusy, q.clients)
		}
		if q.byUID[w.uid] >= q.perCaller {
			return fmt.Errorf("%w: %d requests of this caller waiting, the most one caller may have wait (of %d in all)", api.ErrBusy, q.byUID[w.uid], q.maxWaiting)
		}
		q.clients++
		q.byUID[w.uid]++
	case forRefusal:
		if q.refusals >= maxRefusals {
			return errRefusalsFull
		}
		q.refusals++
	}
	q.waiting.Add(1)
	return nil
}

// leave undoes admit once w stops waiting.
func (q *queue) leave(w waiter) {
	q.waiting.Add(-1)
	q.mu.Lock()
	defer q.mu.Unlock()
	switch w.kind {
	case forClient:
		q.clients--
		if q.byUID[w.uid]--; q.byUID[w.uid] == 0 {
			delete(q.byUID, w.uid)
		}
	case forRefusal:
		q.refusals--
	}
}

// do runs fn for w once it is the queue's turn. The wait ends with ErrBusy
// at ctx's deadline, or with ctx's error when the caller went away, or
// with errStopping once the queue closes (it never turns again: review 73,
// a refusal count's writer waited for its deadline after the daemon had
// stopped); once fn runs it runs to the end, since a TPM command cannot be
// taken back.
func (q *queue) do(ctx context.Context, w waiter, fn func() error) error {
	if err := q.admit(w); err != nil {
		return err
	}
	select {
	case q.slot <- struct{}{}:
		q.leave(w)
	case <-q.stopping:
		q.leave(w)
		return errStopping
	case <-ctx.Done():
		q.leave(w)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: the request's deadline passed while it waited", api.ErrBusy)
		}
		return ctx.Err()
	}
	if q.closed.Load() {
		<-q.slot
		return errStopping
	}
	q.since.Store(time.Now().UnixNano())
	defer func() {
		q.since.Store(0)
		<-q.slot
		if q.waiting.Load() > 0 {
			// The request admitted now was made runnable on this
			// thread, behind this one's answer (JSON, the write, a
			// signature's check): it goes first, so that the TPM has
			// its next command while this one answers (issue 14).
			runtime.Gosched()
		}
	}()
	return fn()
}

// tryDo runs fn now, if no operation holds the queue and none waits for
// it, and reports whether it ran: for the daemon's own upkeep (its rest),
// which never takes a client's place in the queue nor waits.
func (q *queue) tryDo(fn func() error) (bool, error) {
	if q.waiting.Load() > 0 {
		return false, nil
	}
	select {
	case q.slot <- struct{}{}:
	default:
		return false, nil
	}
	if q.closed.Load() {
		<-q.slot
		return false, nil
	}
	q.since.Store(time.Now().UnixNano())
	defer func() {
		q.since.Store(0)
		<-q.slot
	}()
	return true, fn()
}

// close takes the slot for good once the operation holding it has ended, so
// that nothing runs after it but last (when not nil), run holding the slot;
// requests still waiting are turned away with ErrBusy. It gives up at ctx's
// end, leaving the running operation alone (and last not run).
func (q *queue) close(ctx context.Context, last func()) error {
	q.closed.Store(true)
	q.closeOnce.Do(func() { close(q.stopping) })
	select {
	case q.slot <- struct{}{}:
		if last != nil {
			last()
		}
		q.lastRan.Store(true)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// heldSince reports when the operation now holding the queue was admitted,
// and whether one holds it.
func (q *queue) heldSince() (time.Time, bool) {
	n := q.since.Load()
	if n == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}
