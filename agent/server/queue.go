package server

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/provd/provd/agent"
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
}

func newQueue(maxWaiting int) *queue {
	return &queue{slot: make(chan struct{}, 1), maxWaiting: int64(maxWaiting)}
}

// do runs fn once it is the queue's turn. The wait ends with ErrBusy at
// ctx's deadline, or with ctx's error when the caller went away; once fn
// runs it runs to the end, since a TPM command cannot be taken back.
func (q *queue) do(ctx context.Context, fn func() error) error {
	if n := q.waiting.Add(1); n > q.maxWaiting {
		q.waiting.Add(-1)
		return fmt.Errorf("%w (%d requests waiting)", agent.ErrBusy, n-1)
	}
	select {
	case q.slot <- struct{}{}:
		q.waiting.Add(-1)
	case <-ctx.Done():
		q.waiting.Add(-1)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return agent.ErrBusy
		}
		return ctx.Err()
	}
	q.since.Store(time.Now().UnixNano())
	defer func() {
		q.since.Store(0)
		<-q.slot
	}()
	return fn()
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
