package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"
)

// Sizes of the TPM 2.0 command/response header: tag (2), size (4), code (4).
const (
	headerSize = 10
	// maxResponse bounds what we accept from a TPM; TPM_PT_MAX_RESPONSE_SIZE is
	// 4096 on swtpm and on the hardware we know. Anything larger is a broken
	// or hostile peer.
	maxResponse = 64 << 10
)

// ErrTransport marks failures of the channel to the TPM itself (I/O, framing),
// as opposed to errors the TPM returned.
var ErrTransport = errors.New("TPM transport")

// streamTransport sends TPM commands over a byte stream (TCP to swtpm, a unix
// socket). It reads the 10-byte response header and then exactly the size the
// header announces: a response can arrive in pieces, and go-tpm's stock TCP
// transport does a single Read and fails when it does.
//
// After any I/O or framing failure the stream may be out of step with the
// TPM (bytes of a command unread, or of a response unconsumed): every later
// response would answer an earlier command (found by review: one oversized
// command broke the daemon for every caller until restart). The connection
// is then closed and the next command dials a new one; the TPM's state
// (loaded objects, sessions) lives on in the TPM, not in the connection.
//
// Its connection is its own to guard: a probe (counting.Generation's) and
// a Send take mu, so a probe never peeks at an answer waiting to be read
// and takes it for the TPM's close (found by CI: two TPMs of a test on one
// stream, one's probe beside the other's command in flight).
type streamTransport struct {
	mu      sync.Mutex
	conn    net.Conn // nil after a failure, until the next Send dials again
	redial  func() (net.Conn, error)
	timeout time.Duration
	// onLost is called whenever the connection is given up (closed by the
	// TPM while idle, or failed in flight): the TPM's generation moves
	// (counting.generation), since whatever it held may be gone or another
	// client's by the time provd is back.
	onLost func()
	// Reconnects counts the connections dialed again after a failure.
	reconnects atomic.Int64
	// downSince is when dialing again last failed for redialFor; zero
	// while the TPM answers.
	downSince time.Time
}

// probe closes the connection when the TPM closed its end while idle (it
// restarted): the next command dials again.
func (s *streamTransport) probe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropClosed()
}

// dropClosed is probe under mu.
func (s *streamTransport) dropClosed() {
	if s.conn != nil && !alive(s.conn) {
		s.lose()
	}
}

// lose gives the connection up.
func (s *streamTransport) lose() {
	s.conn.Close()
	s.conn = nil
	if s.onLost != nil {
		s.onLost()
	}
}

func (s *streamTransport) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The TPM closed the connection while idle (it restarted): the command
	// has not left yet, so dialing again and sending it is safe, and the
	// caller never sees the old connection's end.
	s.dropClosed()
	if s.conn == nil {
		conn, err := s.dialAgain()
		if err != nil {
			return nil, err
		}
		s.conn = conn
		s.reconnects.Add(1)
	}
	rsp, err := s.send(cmd)
	if err != nil {
		s.lose()
		// Whether the TPM ran the command is not known: it is not
		// resent (it may have changed state), the caller is told.
		return nil, fmt.Errorf("%w (the connection is closed; whether the TPM ran the command is not known; the next command connects again)", err)
	}
	return rsp, nil
}

// redialFor is how long a lost TPM is dialed again before a command fails:
// a TPM that restarts (swtpm after a power cut, a VM's TPM migrated) takes
// a moment to listen again, and no command has left yet, so waiting is safe.
const redialFor = 3 * time.Second

// dialAgain dials the TPM again, retrying a refused connection for up to
// redialFor; after that the TPM is not there (ErrNoTPM), and until it
// answers again each command tries one dial and fails at once (found by
// review: with the TPM gone, every queued request waited out the window in
// turn, holding the queue, whatever its deadline).
func (s *streamTransport) dialAgain() (net.Conn, error) {
	if !s.downSince.IsZero() {
		conn, err := s.redial()
		if err != nil {
			return nil, fmt.Errorf("%w: the TPM has not answered since %s: %v", ErrNoTPM, s.downSince.UTC().Format(time.RFC3339), err)
		}
		s.downSince = time.Time{}
		return conn, nil
	}
	deadline := time.Now().Add(redialFor)
	wait := 5 * time.Millisecond
	for {
		conn, err := s.redial()
		if err == nil {
			return conn, nil
		}
		if time.Now().Add(wait).After(deadline) {
			s.downSince = time.Now()
			return nil, fmt.Errorf("%w: the connection to the TPM was lost, and dialing it again failed for %v: %v", ErrNoTPM, redialFor, err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// alive reports whether conn is still open and in step, without waiting: a
// TPM answers only commands, so between them an idle connection has nothing
// to read. A peek that would block means alive; end of file or an error
// means the other side closed it; bytes nobody asked for mean it is out of
// step. (A read deadline in the past cannot ask this: Go returns the timeout
// without reading.) A connection that cannot be asked is taken as alive.
func alive(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	live := true
	var b [1]byte
	if err := raw.Read(func(fd uintptr) bool {
		n, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		live = n < 0 && errors.Is(rerr, unix.EAGAIN)
		return true // never wait for readiness
	}); err != nil {
		return false
	}
	return live
}

func (s *streamTransport) send(cmd []byte) ([]byte, error) {
	if s.timeout > 0 {
		if err := s.conn.SetDeadline(time.Now().Add(s.timeout)); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrTransport, err)
		}
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("%w: write: %v", ErrTransport, err)
	}
	return readFramed(s.conn)
}

func (s *streamTransport) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	return s.conn.Close()
}

// readFramed reads one TPM response: header first, then the announced rest.
func readFramed(r io.Reader) ([]byte, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: read response header: %v", ErrTransport, err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxResponse {
		return nil, fmt.Errorf("%w: response announces %d bytes", ErrTransport, size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(r, rsp[headerSize:]); err != nil {
		return nil, fmt.Errorf("%w: read response body: %v", ErrTransport, err)
	}
	return rsp, nil
}

// Stats counts what provd asked of the TPM. Benchmarks and `-v` print it; tests
// use it to pin the number of TPM commands an operation costs.
type Stats struct {
	Commands int64         // commands sent, retries included
	Retries  int64         // commands resent after TPM_RC_RETRY/YIELDED/TESTING/NV_RATE, or after a power cycle provd started the TPM from
	Wait     time.Duration // time spent waiting for the TPM
}

// Sub returns the difference s - o, for measuring one operation.
func (s Stats) Sub(o Stats) Stats {
	return Stats{Commands: s.Commands - o.Commands, Retries: s.Retries - o.Retries, Wait: s.Wait - o.Wait}
}

// counting serializes access to the TPM (one command in flight), retries the TPM
// warnings that mean "try again", and counts commands and waiting time.
type counting struct {
	mu       sync.Mutex
	next     transport.TPM
	commands atomic.Int64
	retries  atomic.Int64
	wait     atomic.Int64
	// backoff is the first delay before a retry; it doubles up to maxRetries.
	backoff    time.Duration
	maxRetries int
	// sleep waits out one delay (Options.RetrySleep; time.Sleep by default).
	sleep func(time.Duration)
	// maxCommand is TPM_PT_MAX_COMMAND_SIZE, read when first needed.
	maxCommand int
	// generation moves whenever transient handles provd holds may have
	// changed hands: the connection was lost, or provd started the TPM up
	// after a power cycle (Generation).
	generation atomic.Uint64
	// lastReopen is the generation the device's last opening again began
	// (reopened; 0: never), and spaceLost asks Send to forget the live
	// sessions of the space that went with it.
	lastReopen atomic.Uint64
	spaceLost  atomic.Bool
	// sweep is set when a handle may have leaked (NeedsSweep).
	sweep atomic.Bool
	// probe checks the connection for a close while idle (streamTransport),
	// the lock held; nil for devices.
	probe func()
	// live is the sessions the connection holds (liveSessions).
	live liveSessions
	// started numbers each session handle's latest StartAuthSession
	// (starts counts them): a handle handed out again is a new session
	// (slotTaken).
	starts  uint64
	started map[tpm2.TPMHandle]uint64
	// closed: TPM.Close closed the channel, the lock held; every later
	// command fails without reaching the transport (which would dial a
	// stream again).
	closed bool
}

// errClosed is what a command on a closed TPM gets.
var errClosed = fmt.Errorf("%w: the TPM was closed", ErrTransport)

// close closes the channel with closer once no command is in flight: a
// command Close meets waits for its answer, and none is sent after
// (found by review: a command sent after Close dialed the stream again,
// and one in flight read the connection Close was closing).
func (c *counting) close(closer func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true // once: TPM.Close runs it once
	if closer == nil {
		return nil
	}
	return closer()
}

// roomForSession reports whether one more session can start while those
// the connection holds stay loaded (maxSessions), with one slot to spare:
// the count is built from answers, and a flush's answer has no HMAC, so
// A1 can have it miss a session the TPM still holds (found by review: one
// flush dropped and answered success, and eleven operations then met the
// resource manager's limit). With the slot spared, a session the count
// missed costs what it cost before the shared session was kept: a
// two-session operation's room.
func (c *counting) roomForSession() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.live)+1+1 <= maxSessions
}

// slotTaken reports whether the session at h that start (startOf) numbers
// no longer holds h's slot on the TPM's word: the connection holds another
// session in that slot (liveSessions.slotTaken), or h was handed out by a
// later StartAuthSession.
func (c *counting) slotTaken(h tpm2.TPMHandle, start uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live.slotTaken(h) || c.started[h] != start
}

// startOf numbers the latest StartAuthSession that answered h (0: none).
func (c *counting) startOf(h tpm2.TPMHandle) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started[h]
}

// NeedsSweep reports, once, whether since the last call a handle may have
// been left in the TPM that nobody holds: a command that makes one failed
// (its error may be forged on the bus after the TPM made it, or its answer
// lost), or the TPM's slots ran out. The owner of the connection then
// flushes what it does not hold.
func (c *counting) NeedsSweep() bool { return c.sweep.Swap(false) }

// unheld notes that a command that makes a handle failed after the TPM
// answered it: the answer failed its HMAC, or could not be read, so the
// handle the TPM made (if it made one) is nobody's (found by review: a
// forged CreateLoaded answer at provision left the PK loaded). The owner's
// sweep flushes it.
func (c *counting) unheld() { c.sweep.Store(true) }

// mayLeak reports whether a failure of command cc (rc: its answer; 0: no
// answer) may leave a handle nobody holds: a command that makes a
// transient object or session and failed, a flush that failed (its error
// may be forged, or the handle flushed the wrong one: an answer that made
// the handle changed on the bus; found by review), or any command refused
// for want of slots.
func mayLeak(rc tpm2.TPMRC, cc tpm2.TPMCC) bool {
	switch rc {
	case tpm2.TPMRCObjectMemory, tpm2.TPMRCSessionMemory, tpm2.TPMRCObjectHandles, tpm2.TPMRCSessionHandles:
		return true
	}
	switch cc {
	case tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreatePrimary,
		tpm2.TPMCCContextLoad, tpm2.TPMCCCreateLoaded, tpm2.TPMCCHMACStart, tpm2.TPMCCHashSequenceStart,
		tpm2.TPMCCFlushContext:
		return true
	}
	return false
}

// madeHandle refuses the answer rsp to cmd, a command that makes a handle,
// when the handle is not what cmd makes: a load, a creation or a sequence
// start makes a transient object (0x80...); StartAuthSession a session of
// the type it asks for (HMAC 0x02..., policy or trial 0x03...);
// ContextLoad a transient object for a saved object, and for a saved
// session the session at its own handle. Handles have no HMAC, so only the
// bus answers anything else: a persistent handle (0x81..., the SRK's, say)
// would be left alone by every flush and what the TPM made stay loaded
// (found by review: A1 flipping one bit of the AK load's answer left the
// AK loaded), and a session's handle for a context-loaded key would be
// kept as the key's (found by review: the key failed until restart). The
// caller asks for the sweep, which flushes what the TPM made.
func madeHandle(cmd, rsp []byte) error {
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	var ok func(h uint32) bool
	transient := func(h uint32) bool { return h>>24 == 0x80 }
	switch cc {
	case tpm2.TPMCCLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreateLoaded,
		tpm2.TPMCCHMACStart, tpm2.TPMCCHashSequenceStart:
		ok = transient
	case tpm2.TPMCCStartAuthSession:
		ok = func(h uint32) bool { return h>>24 == 0x02 || h>>24 == 0x03 }
		if se, found := sessionType(cmd); found {
			want := uint32(0x03)
			if se == tpm2.TPMSEHMAC {
				want = 0x02
			}
			ok = func(h uint32) bool { return h>>24 == want }
		}
	case tpm2.TPMCCContextLoad:
		ok = transient
		// TPMS_CONTEXT: sequence (8), then savedHandle.
		if ctx := commandParams(cmd, 0); len(ctx) >= 12 {
			if saved := binary.BigEndian.Uint32(ctx[8:]); saved>>24 == 0x02 || saved>>24 == 0x03 {
				ok = func(h uint32) bool { return h == saved }
			}
		}
	default:
		return nil
	}
	if len(rsp) < headerSize+4 {
		return fmt.Errorf("%w: command 0x%x answered success without a handle", ErrResponseForged, uint32(cc))
	}
	if h := binary.BigEndian.Uint32(rsp[headerSize:]); !ok(h) {
		return fmt.Errorf("%w: command 0x%x answered handle 0x%08x, which it does not make", ErrResponseForged, uint32(cc), h)
	}
	return nil
}

// sessionType is the sessionType StartAuthSession command cmd asks for;
// found false when cmd is too short to say.
func sessionType(cmd []byte) (se tpm2.TPMSE, found bool) {
	p := commandParams(cmd, 2) // tpmKey, bind
	off := 0
	for range 2 { // nonceCaller, encryptedSalt
		if len(p) < off+2 {
			return 0, false
		}
		off += 2 + int(binary.BigEndian.Uint16(p[off:]))
	}
	if len(p) <= off {
		return 0, false
	}
	return tpm2.TPMSE(p[off]), true
}

// commandParams is the parameter area of cmd, a command with handles
// handles: after them and the authorization area, if any; nil when cmd is
// too short for either.
func commandParams(cmd []byte, handles int) []byte {
	off := headerSize + 4*handles
	if len(cmd) < off {
		return nil
	}
	if tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
		if len(cmd) < off+4 {
			return nil
		}
		off += 4 + int(binary.BigEndian.Uint32(cmd[off:]))
		if off < 0 || len(cmd) < off {
			return nil
		}
	}
	return cmd[off:]
}

// Generation moves whenever the handles of loaded objects may no longer
// name what they named: the connection to the TPM was lost (the TPM may
// have restarted, and another client may load objects at the old numbers
// before provd is back), or provd started the TPM up. A cache
// of loaded objects checks its handles again when it changes.
//
// It first asks the connection whether the TPM closed it while idle (a
// peek, no command), so that a restart nobody has sent a command through
// yet is seen before a handle is used.
func (c *counting) Generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.probe != nil && !c.closed {
		c.probe()
	}
	return c.generation.Load()
}

// reopened is the device's onLost (deviceTransport): the generation moves,
// and behind a resource manager (rm) the sessions the connection held are
// gone with its space; on /dev/tpmN they are still loaded, and a handle
// may have leaked (the sweep). Called from inside send, the lock held.
func (c *counting) reopened(rm bool) {
	c.lastReopen.Store(c.generation.Add(1))
	if rm {
		c.spaceLost.Store(true)
	} else {
		c.sweep.Store(true)
	}
}

func (c *counting) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	rsp, err := c.send(cmd)
	if c.spaceLost.Swap(false) {
		clear(c.live)
	}
	if err == nil {
		if c.live == nil {
			c.live, c.started = liveSessions{}, map[tpm2.TPMHandle]uint64{}
		}
		c.live.note(cmd, rsp)
		if len(rsp) >= headerSize+4 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCStartAuthSession &&
			binary.BigEndian.Uint32(rsp[6:10]) == 0 {
			c.starts++
			c.started[tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[headerSize:]))] = c.starts
		}
	}
	return rsp, err
}

// send is Send with the lock held.
func (c *counting) send(cmd []byte) ([]byte, error) {
	if err := c.checkSize(cmd); err != nil {
		return nil, err
	}
	delay := c.backoff
	for attempt := 0; ; attempt++ {
		start := time.Now()
		rsp, err := c.next.Send(cmd)
		c.wait.Add(int64(time.Since(start)))
		c.commands.Add(1)
		if err != nil {
			if mayLeak(0, tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))) {
				c.sweep.Store(true)
			}
			return nil, err
		}
		if len(rsp) < headerSize {
			return nil, fmt.Errorf("%w: short response (%d bytes)", ErrTransport, len(rsp))
		}
		rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
		if rc != tpm2.TPMRCSuccess && mayLeak(rc, tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))) {
			c.sweep.Store(true)
		}
		if err := sessionErrorWithoutSession(cmd, rc); err != nil {
			return nil, err
		}
		if rc == tpm2.TPMRCSuccess {
			if err := madeHandle(cmd, rsp); err != nil {
				c.sweep.Store(true)
				return nil, err
			}
		}
		if rc == tpm2.TPMRCInitialize && attempt == 0 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != tpm2.TPMCCStartup {
			// The TPM was power-cycled under us (found by the fault
			// instrument: swtpm killed and started again): start it up
			// as firmware would (CLEAR: transient objects, sessions and
			// PCRs are gone anyway) and send the command once more,
			// but only when the Startup shows the TPM needed one. A
			// TPM that answers it "already started" did not refuse
			// the command for that: the answer was forged, by someone
			// on the bus who may have passed the command on (found by
			// review: resent, each forgery left a session or object
			// loaded until the slots were full), and it is returned.
			started, err := c.startup()
			if err != nil {
				return nil, err
			}
			if !started {
				return rsp, nil
			}
			// A resend as after a warning: if the Startup's answer was
			// forged too, the command may have run, and what its copy
			// meets says so (agent.policyUse; found by review).
			c.retries.Add(1)
			continue
		}
		if !retryable(rc) || attempt >= c.maxRetries {
			return rsp, nil
		}
		c.retries.Add(1)
		c.sleep(delay)
		delay *= 2
	}
}

// startup sends TPM2_Startup(CLEAR) on the raw channel, the lock held, and
// reports whether it started the TPM (false: the TPM was started already).
// A TPM provd started has lost every transient handle: the generation moves.
func (c *counting) startup() (started bool, err error) {
	_, err = (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c.next)
	c.commands.Add(1)
	switch {
	case err == nil:
		c.generation.Add(1)
		clear(c.live) // a TPM reset ends every session
		return true, nil
	case errors.Is(err, tpm2.TPMRCInitialize):
		return false, nil
	}
	return false, Wrap("TPM2_Startup (after a power cycle)", err)
}

// ErrCommandTooLarge: a command larger than the TPM accepts
// (TPM_PT_MAX_COMMAND_SIZE) was refused before it was sent: the input it
// carries is too large for the TPM.
var ErrCommandTooLarge = errors.New("command larger than the TPM accepts")

// minCommandSize is the size every TPM provd knows accepts (4096 on swtpm and
// the hardware we know); a larger command asks the TPM its own limit.
const minCommandSize = 4096

// checkSize refuses a command larger than the TPM accepts, or one whose
// header does not state its own length: sent, either would put the stream
// out of step. The TPM's limit is read once, raw (the lock is held), and only
// when a command exceeds minCommandSize.
func (c *counting) checkSize(cmd []byte) error {
	if len(cmd) < headerSize || binary.BigEndian.Uint32(cmd[2:6]) != uint32(len(cmd)) {
		return fmt.Errorf("%w: a command whose header does not state its length", ErrTransport)
	}
	if len(cmd) <= minCommandSize {
		return nil
	}
	if c.maxCommand == 0 {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTMaxCommandSize), PropertyCount: 1}).Execute(c.next)
		c.commands.Add(1)
		if err != nil {
			return Wrap("TPM2_GetCapability", err)
		}
		props, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTMaxCommandSize {
			return fmt.Errorf("TPM2_GetCapability: no TPM_PT_MAX_COMMAND_SIZE (%v)", err)
		}
		c.maxCommand = int(props.TPMProperty[0].Value)
	}
	if len(cmd) > c.maxCommand {
		return fmt.Errorf("%w: %d bytes, the TPM takes at most %d", ErrCommandTooLarge, len(cmd), c.maxCommand)
	}
	return nil
}

// retryable reports the warnings after which the same command may succeed:
// RETRY, YIELDED, TESTING, and NV_RATE (a hardware TPM rate-limits NV writes;
// an audit anchor extend must not fail for it). Any other code is returned to
// the caller at once: in particular an authorization failure is never retried,
// so a retry loop cannot burn dictionary-attack tries.
func retryable(rc tpm2.TPMRC) bool {
	return rc == tpm2.TPMRCRetry || rc == tpm2.TPMRCYielded || rc == tpm2.TPMRCTesting || rc == tpm2.TPMRCNVRate
}

func (c *counting) stats() Stats {
	return Stats{Commands: c.commands.Load(), Retries: c.retries.Load(), Wait: time.Duration(c.wait.Load())}
}

// sessionErrorWithoutSession is ErrResponseForged for an error that names
// an authorization session (a format-one response code with its session
// bit: TPM 2.0 Part 2, 6.6) in answer to a command sent with none: the TPM
// numbers only the sessions a command carries, so only the bus gives that
// answer (found by review: a TPM_RC_BAD_AUTH forged for
// TPM2_PolicyCommandCode was reported as a wrong value, exit 11).
func sessionErrorWithoutSession(cmd []byte, rc tpm2.TPMRC) error {
	const format1, parameter, session = 0x080, 0x040, 0x800
	if rc&format1 == 0 || rc&parameter != 0 || rc&session == 0 ||
		tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTNoSessions {
		return nil
	}
	return fmt.Errorf("%w: command 0x%x, sent with no session, answered 0x%x, an error of a session", ErrResponseForged, binary.BigEndian.Uint32(cmd[6:10]), uint32(rc))
}
