package server

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/provd/provd/api"
)

// queue serializes everything that touches the TPM or the agent: one
// operation at a time, in arrival order (a channel's blocked senders are
// served first come, first served). A request waits at most until its
// context's deadline, and at most maxWaiting requests wait at all.
type queue struct {
	slot       chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	// since is when the operation holding the slot was admitted
	// (UnixNano); 0 while none holds it.
	since atomic.Int64
	// closed: the daemon is stopping; close holds the slot for good.
	closed atomic.Bool
}

// errStopping turns away a request admitted after close.
var errStopping = fmt.Errorf("%w: the daemon is stopping", api.ErrBusy)

func newQueue(maxWaiting int) *queue {
	return &queue{slot: make(chan struct{}, 1), maxWaiting: int64(maxWaiting)}
}

// do runs fn once it is the queue's turn. The wait ends with ErrBusy at
// ctx's deadline, or with ctx's error when the caller went away; once fn
// runs it runs to the end, since a TPM command cannot be taken back.
func (q *queue) do(ctx context.Context, fn func() error) error {
	if n := q.waiting.Add(1); n > q.maxWaiting {
		q.waiting.Add(-1)
		return fmt.Errorf("%w (%d requests waiting)", api.ErrBusy, n-1)
	}
	select {
	case q.slot <- struct{}{}:
		q.waiting.Add(-1)
	case <-ctx.Done():
		q.waiting.Add(-1)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return api.ErrBusy
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
// which never takes a client's place in the queue nor counts against
// maxWaiting.
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
// that nothing runs after it; requests still waiting are turned away with
// ErrBusy. It gives up at ctx's end, leaving the running operation alone.
func (q *queue) close(ctx context.Context) error {
	q.closed.Store(true)
	select {
	case q.slot <- struct{}{}:
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
