package swtpmtest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"syscall"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DeviceStandIn is a swtpm connection standing for a TPM character device.
type DeviceStandIn struct {
	Addr string
	// kernelFlush: a connection's own handles are flushed at its close
	// (/dev/tpmrm0); false: they stay in the TPM (/dev/tpm0).
	KernelFlush bool

	Mu      sync.Mutex
	Armed   bool
	ArmCC   tpm2.TPMCC   // the command the kernel fails first (0: the next)
	ArmIn   int          // >0: the kernel fails the armIn-th command from now
	Failed  []tpm2.TPMCC // the commands the kernel failed
	Stale   []string     // commands that named a transient handle of an old space
	Opens   int
	Closes  int
	FailErr error // the next open fails with it (once)
	// onOpen runs on each connection after the first, before provd's
	// first command on it: A2's own commands (raw: the TPM).
	OnOpen func(raw transport.TPM)
	cur    *standInConn
	Log    []StandInCommand
}

type StandInCommand struct {
	Conn int    // the connection, 1 for the first
	Cmd  []byte // the command
}

type standInConn struct {
	s    *DeviceStandIn
	id   int
	rw   transport.TPMCloser
	dead bool
	own  map[uint32]bool
}

func (s *DeviceStandIn) Open(string) (transport.TPMCloser, error) {
	s.Mu.Lock()
	if err := s.FailErr; err != nil {
		s.FailErr = nil
		s.Mu.Unlock()
		return nil, err
	}
	s.Mu.Unlock()
	c, err := net.Dial("tcp", s.Addr)
	if err != nil {
		return nil, err
	}
	s.Mu.Lock()
	s.Opens++
	conn := &standInConn{s: s, id: s.Opens, rw: transport.FromReadWriteCloser(c), own: map[uint32]bool{}}
	s.cur = conn
	on := s.OnOpen
	s.Mu.Unlock()
	if conn.id > 1 && on != nil {
		on(conn.rw)
	}
	return conn, nil
}

func (s *DeviceStandIn) Arm(cc tpm2.TPMCC) {
	s.Mu.Lock()
	s.Armed, s.ArmCC = true, cc
	s.Mu.Unlock()
}

// makesHandle: the commands whose answer's first handle is a new
// transient object or session of the connection's.
func makesHandle(cc tpm2.TPMCC) bool {
	switch cc {
	case tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreatePrimary,
		tpm2.TPMCCContextLoad, tpm2.TPMCCCreateLoaded, tpm2.TPMCCHMACStart, tpm2.TPMCCHashSequenceStart:
		return true
	}
	return false
}

func (c *standInConn) Send(cmd []byte) ([]byte, error) {
	cc := CommandCode(cmd)
	c.s.Mu.Lock()
	if c.s.Armed && (c.s.ArmCC == 0 || c.s.ArmCC == cc) {
		c.s.Armed, c.dead = false, true
	}
	if c.s.ArmIn > 0 {
		c.s.ArmIn--
		if c.s.ArmIn == 0 {
			c.dead = true
		}
	}
	dead := c.dead
	if dead {
		c.s.Failed = append(c.s.Failed, cc)
	}
	// The kernel maps a transient handle of the connection's own space
	// only: one made on an earlier connection (the old space) is stale
	// (the kernel fails the write EINVAL, or maps the number to another
	// object of the new space). ReadPublic is the cache's own recheck,
	// which expects that.
	if !dead && c.id > 1 && cc != tpm2.TPMCCReadPublic && len(cmd) >= 14 {
		if h := binary.BigEndian.Uint32(cmd[10:14]); h>>24 == 0x80 && !c.own[h] {
			c.s.Stale = append(c.s.Stale, fmt.Sprintf("%v(0x%08x) on connection %d", cc, h, c.id))
		}
	}
	if !dead {
		c.s.Log = append(c.s.Log, StandInCommand{Conn: c.id, Cmd: bytes.Clone(cmd)})
	}
	c.s.Mu.Unlock()
	if dead {
		return nil, &net.OpError{Op: "write", Err: fmt.Errorf("write /dev/tpmrm0: %w", syscall.EFAULT)}
	}
	rsp, err := c.rw.Send(cmd)
	if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
		c.s.Mu.Lock()
		if makesHandle(cc) {
			c.own[binary.BigEndian.Uint32(rsp[10:14])] = true
		}
		if cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 {
			delete(c.own, binary.BigEndian.Uint32(cmd[10:14]))
		}
		c.s.Mu.Unlock()
	}
	return rsp, err
}

func (c *standInConn) Close() error {
	c.s.Mu.Lock()
	c.s.Closes++
	own := c.own
	c.own = map[uint32]bool{}
	c.s.Mu.Unlock()
	if c.s.KernelFlush {
		for h := range own {
			_, _ = (tpm2.FlushContext{FlushHandle: tpm2.TPMHandle(h)}).Execute(c.rw)
		}
	}
	return c.rw.Close()
}

// named reports the commands sent on connections after the first that
// name h anywhere after their header (handle area or sessions).
func (s *DeviceStandIn) Named(h tpm2.TPMHandle) []tpm2.TPMCC {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(h))
	var got []tpm2.TPMCC
	for _, c := range s.Log {
		if c.Conn > 1 && len(c.Cmd) > 10 && bytes.Contains(c.Cmd[10:], b[:]) {
			got = append(got, CommandCode(c.Cmd))
		}
	}
	return got
}

// A2Session is A2's HMAC session, started on raw, unsalted and unbound.
func A2Session(raw transport.TPM) (tpm2.TPMHandle, error) {
	return A2SessionOf(raw, tpm2.TPMSEHMAC)
}

func A2SessionOf(raw transport.TPM, se tpm2.TPMSE) (tpm2.TPMHandle, error) {
	rsp, err := StartOwnSession(raw, se)
	if err != nil {
		return 0, err
	}
	// Between A2's commands the kernel keeps its session saved, not
	// loaded: it holds none of the TPM's loaded session slots.
	saved, err := (tpm2.ContextSave{SaveHandle: rsp.SessionHandle}).Execute(raw)
	if err != nil {
		return 0, err
	}
	a2Saved.Store(rsp.SessionHandle, saved.Context)
	return rsp.SessionHandle, nil
}

// a2Saved holds A2's sessions' saved contexts, by handle.
var a2Saved sync.Map

// A2Alive reports whether A2's session h is still the TPM's: its saved
// context loads (a flushed session's does not), on raw; it is saved again.
func A2Alive(raw transport.TPM, h tpm2.TPMHandle) bool {
	v, ok := a2Saved.Load(h)
	if !ok {
		return false
	}
	if _, err := (tpm2.ContextLoad{Context: v.(tpm2.TPMSContext)}).Execute(raw); err != nil {
		return false
	}
	saved, err := (tpm2.ContextSave{SaveHandle: h}).Execute(raw)
	if err == nil {
		a2Saved.Store(h, saved.Context)
	}
	return true
}

// A2Raw is the stand-in's current connection to the TPM, for A2.
func (s *DeviceStandIn) A2Raw() transport.TPM {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	return s.cur.rw
}
