// Package tpmproxy stands between a TPM client and swtpm's two TCP
// channels, so that provd and tpm2-tools are measured by one counter and,
// when asked, on one model of a discrete TPM's speed (issue 14): it counts
// every command that crosses the command channel by its code, and can hold
// each response for the time a hardware TPM takes for that command
// (Model). The control channel (swtpm's own protocol, which tpm2-tss's
// swtpm TCTI uses beside the command channel, on the next port) is relayed
// as it is. It is a measuring instrument for the benchmark driver
// (test/benchdriver), not part of provd.
package tpmproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// maxFrame bounds a command or response: TPMs take a few KB.
const maxFrame = 1 << 20

// Model is how long a TPM takes per command: PerCommand by code, Default
// for the others. The zero Model adds nothing (plain swtpm).
type Model struct {
	Name       string
	PerCommand map[tpm2.TPMCC]time.Duration
	Default    time.Duration
}

// Delay is how long the model holds the response to command cc.
func (m *Model) Delay(cc tpm2.TPMCC) time.Duration {
	if m == nil {
		return 0
	}
	if d, ok := m.PerCommand[cc]; ok {
		return d
	}
	return m.Default
}

// Proxy relays one client at a time to swtpm (as swtpm itself serves one).
type Proxy struct {
	// Addr is the command channel, 127.0.0.1:P; the control channel is on
	// port P+1 (the convention of tpm2-tss's swtpm TCTI).
	Addr string
	// Port is P, for a TCTI's port=.
	Port int

	ln, ctrlLn         net.Listener
	target, ctrlTarget string
	model              atomic.Pointer[Model]

	mu     sync.Mutex
	counts map[tpm2.TPMCC]int
	seq    []Step
	held   time.Duration
	busy   time.Duration // command sent to response read, holds included
	// times are, per command code, the time at the TPM (busy's share) and
	// the gap before the command: from the previous response written back
	// to this command read in full, the client's time between them.
	times map[tpm2.TPMCC]*Times
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// Start listens on a free pair of loopback ports and relays them to
// swtpm's command channel target and control channel ctrlTarget, holding
// responses as model says (nil: not at all).
func Start(target, ctrlTarget string, model *Model) (*Proxy, error) {
	p := &Proxy{target: target, ctrlTarget: ctrlTarget, counts: map[tpm2.TPMCC]int{}, times: map[tpm2.TPMCC]*Times{}, conns: map[net.Conn]bool{}}
	p.model.Store(model)
	var err error
	for range 50 {
		if p.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
		port := p.ln.Addr().(*net.TCPAddr).Port
		if p.ctrlLn, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1))); err == nil {
			p.Port, p.Addr = port, p.ln.Addr().String()
			break
		}
		p.ln.Close()
	}
	if p.ctrlLn == nil {
		return nil, fmt.Errorf("tpmproxy: no free pair of ports: %w", err)
	}
	p.wg.Add(2)
	go p.serve(p.ln, p.relayCommands, target)
	go p.serve(p.ctrlLn, relayBytes, ctrlTarget)
	return p, nil
}

func (p *Proxy) serve(ln net.Listener, relay func(client, tpm net.Conn) error, target string) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		t, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c, t, true)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(c, t, false)
			_ = relay(c, t)
		}()
	}
}

func (p *Proxy) track(c, t net.Conn, open bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if open {
		p.conns[c], p.conns[t] = true, true
		return
	}
	delete(p.conns, c)
	delete(p.conns, t)
	c.Close()
	t.Close()
}

// relayCommands passes one command at a time to the TPM and its response
// back, counting the command and holding the response as the model says.
func (p *Proxy) relayCommands(client, tpm net.Conn) error {
	var answered time.Time // the previous response written back
	for {
		cmd, err := readFrame(client)
		if err != nil {
			return err
		}
		cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
		start := time.Now()
		var gap time.Duration
		if !answered.IsZero() {
			gap = start.Sub(answered)
		}
		if _, err := tpm.Write(cmd); err != nil {
			return err
		}
		rsp, err := readFrame(tpm)
		if err != nil {
			return err
		}
		hold := p.model.Load().delayOf(cmd) - time.Since(start)
		if hold > 0 {
			time.Sleep(hold)
		}
		p.mu.Lock()
		p.counts[cc]++
		at := time.Since(start)
		p.busy += at
		t := p.times[cc]
		if t == nil {
			t = &Times{}
			p.times[cc] = t
		}
		t.N++
		t.AtTPM += at
		t.Gap += gap
		if len(p.seq) < maxSeq {
			p.seq = append(p.seq, Step{CC: cc, RC: tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))})
		}
		if hold > 0 {
			p.held += hold
		}
		p.mu.Unlock()
		if _, err := client.Write(rsp); err != nil {
			return err
		}
		answered = time.Now()
	}
}

// Times is where one command code's time went since the last Reset.
type Times struct {
	N int
	// AtTPM is from the command sent to the TPM to its response read (the
	// model's hold included): Busy's share.
	AtTPM time.Duration
	// Gap is the client's time before the command: from the response
	// before it written back to the command read in full (the client's
	// work between two commands of its connection, and both hops).
	Gap time.Duration
}

// Times is, per command code, the time at the TPM and the gap before the
// command since the last Reset: where a client's wall time went.
func (p *Proxy) Times() map[tpm2.TPMCC]Times {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[tpm2.TPMCC]Times, len(p.times))
	for k, v := range p.times {
		out[k] = *v
	}
	return out
}

// readFrame reads one TPM command or response: a 10-byte header whose
// bytes 2..6 are the size of the whole.
func readFrame(r io.Reader) ([]byte, error) {
	h := make([]byte, 10)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(h[2:6])
	if size < 10 || size > maxFrame {
		return nil, fmt.Errorf("tpmproxy: a frame of %d bytes", size)
	}
	b := make([]byte, size)
	copy(b, h)
	if _, err := io.ReadFull(r, b[10:]); err != nil {
		return nil, err
	}
	return b, nil
}

func relayBytes(client, tpm net.Conn) error {
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(tpm, client); errc <- err }()
	go func() { _, err := io.Copy(client, tpm); errc <- err }()
	return <-errc
}

// SetModel changes the model from the next command on (nil: none).
func (p *Proxy) SetModel(m *Model) { p.model.Store(m) }

// Counts is how many commands of each code crossed since the last Reset.
func (p *Proxy) Counts() map[tpm2.TPMCC]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[tpm2.TPMCC]int, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out
}

// Step is one command that crossed, with the response code it got.
type Step struct {
	CC tpm2.TPMCC
	RC tpm2.TPMRC
}

// String is the command's name, with the response code when it failed.
func (s Step) String() string {
	if s.RC != tpm2.TPMRCSuccess {
		return fmt.Sprintf("%s(rc=%#x)", Name(s.CC), uint32(s.RC))
	}
	return Name(s.CC)
}

// maxSeq bounds the recorded sequence; a benchmark's long runs only count.
const maxSeq = 4096

// Sequence is the commands since the last Reset, in order (the first 4096).
func (p *Proxy) Sequence() []Step {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Step(nil), p.seq...)
}

// Total is the number of commands since the last Reset.
func (p *Proxy) Total() int {
	n := 0
	for _, v := range p.Counts() {
		n += v
	}
	return n
}

// Busy is how long the TPM had a command since the last Reset: from each
// command sent to its response read (the model's hold included), so that
// busy over wall time is the share of time spent inside the TPM.
func (p *Proxy) Busy() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.busy
}

// Held is how long the model held responses since the last Reset.
func (p *Proxy) Held() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// Reset zeroes the counters.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts, p.seq, p.held, p.busy = map[tpm2.TPMCC]int{}, nil, 0, 0
	p.times = map[tpm2.TPMCC]*Times{}
}

// Close stops listening and ends every relayed connection.
func (p *Proxy) Close() error {
	err := errors.Join(p.ln.Close(), p.ctrlLn.Close())
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}
