package server

import (
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
)

// Held: a connection gives back what it was counted as at accept, once.
// Counted with a role (not among the role-less), then the roles reloaded
// (SIGHUP: the caller loses its role) before it closes: give undoes take
// with the role captured at accept, so the role-less count does not go
// below zero (which would let role-less callers past their bound); a
// second Close (http.Server's close after a handler's, Shutdown's close
// of an idle connection after the client's) releases nothing more; a
// connection whose peer hung up before accept still has its credentials
// read (the kernel keeps them): it is counted as its uid, not uid -1.
func TestReview56ConnectionGivesBackWhatItTook(t *testing.T) {
	ln, err := net.Listen("unix", review55Abstract(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var role atomic.Bool
	role.Store(true)
	l := &limitedListener{Listener: ln, log: slog.New(slog.NewTextHandler(io.Discard, nil)), busy: []byte(`{}`),
		roleOf: func(Caller) Role {
			if role.Load() {
				return RoleUser
			}
			return 0
		}}
	counts := func() (int, int, map[int]int) {
		l.mu.Lock()
		defer l.mu.Unlock()
		m := map[int]int{}
		for k, v := range l.byUID {
			m[k] = v
		}
		return l.total, l.byClass[noRole], m
	}
	const uid = 63001
	dialed, err := review55DialAs(ln.Addr().String(), uid, 3)
	if err != nil {
		t.Fatal(err)
	}
	var accepted []net.Conn
	for range 2 {
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, c)
	}
	if total, roleless, by := counts(); total != 2 || roleless != 0 || by[uid] != 2 {
		t.Fatalf("two connections with a role: total %d, role-less %d, by uid %v", total, roleless, by)
	}
	role.Store(false) // the roles reloaded
	dialed[2].Close() // the peer hangs up before accept
	c3, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	accepted = append(accepted, c3)
	if total, roleless, by := counts(); total != 3 || roleless != 1 || by[uid] != 3 {
		t.Fatalf("a third, role-less, its peer gone before accept: total %d, role-less %d, by uid %v (want uid %d's, not -1's)", total, roleless, by, uid)
	}
	for _, c := range accepted {
		c.Close()
		c.Close()
	}
	for _, c := range dialed {
		c.Close()
	}
	if total, roleless, by := counts(); total != 0 || roleless != 0 || len(by) != 0 {
		t.Errorf("every connection closed (twice): total %d, role-less %d, by uid %v; want nothing", total, roleless, by)
	}
}
