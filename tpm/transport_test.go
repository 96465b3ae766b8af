package tpm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A command larger than the TPM accepts is refused before it is sent (found
// by review: 100 KB sent as is put the stream out of step with the TPM, and
// every caller after it failed until restart); the TPM keeps answering.
func TestOversizedCommandIsNotSent(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	// TPM2_GetRandom's header, then 100 KB of whatever: the header states
	// the length, as a command built by go-tpm does.
	cmd := make([]byte, 100_000)
	binary.BigEndian.PutUint16(cmd[0:2], uint16(tpm2.TPMSTNoSessions))
	binary.BigEndian.PutUint32(cmd[2:6], uint32(len(cmd)))
	binary.BigEndian.PutUint32(cmd[6:10], uint32(tpm2.TPMCCGetRandom))
	before := tp.Stats()
	if _, err := tp.Send(cmd); !errors.Is(err, tpm.ErrCommandTooLarge) {
		t.Fatalf("a 100 KB command: %v, want ErrCommandTooLarge", err)
	}
	if n := tp.Stats().Sub(before).Commands; n != 1 {
		t.Errorf("%d commands sent, want 1 (reading TPM_PT_MAX_COMMAND_SIZE)", n)
	}
	// A header that does not state the command's length is refused too.
	short := bytes.Clone(cmd[:20])
	if _, err := tp.Send(short); !errors.Is(err, tpm.ErrTransport) {
		t.Fatalf("a command whose header lies about its length: %v", err)
	}
	for range 3 {
		if rsp, err := (tpm2.GetRandom{BytesRequested: 16}).Execute(tp); err != nil || len(rsp.RandomBytes.Buffer) != 16 {
			t.Fatalf("after the refusal: %v", err)
		}
	}
}

// dropper is a TCP proxy to target that cuts the first connection after the
// first response and forwards later connections whole.
func startDropper(t *testing.T, target string) (addr string, conns *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns = new(atomic.Int32)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			go func() { _, _ = copyBuffer(u, c, 4096, 0); u.Close() }()
			go func() {
				if n == 1 {
					buf := make([]byte, 4096)
					k, _ := u.Read(buf)
					_, _ = c.Write(buf[:k])
					c.Close()
					return
				}
				_, _ = copyBuffer(c, u, 4096, 0)
				c.Close()
			}()
		}
	}()
	return l.Addr().String(), conns
}

// A broken connection fails the command in flight, then the next command
// dials again and works: the stream is never used out of step.
func TestTransportReconnectsAfterAFailure(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	env.CloseTPM()
	proxy, conns := startDropper(t, env.Spec[len("swtpm://"):])
	tp, err := tpm.Open(t.Context(), tpm.Options{Spec: "swtpm://" + proxy})
	if err == nil {
		defer tp.Close()
	}
	// Open's first command got its answer, then the connection was cut: a
	// later command of Open, or the first one here, fails; after that the
	// transport dials again.
	var failed bool
	for range 3 {
		if tp == nil {
			break
		}
		_, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp)
		if errors.Is(err, tpm.ErrTransport) {
			failed = true
			continue
		}
		if err != nil {
			t.Fatalf("after the cut: %v", err)
		}
	}
	if tp == nil {
		// Open itself met the cut: open again, through a new connection.
		if tp, err = tpm.Open(t.Context(), tpm.Options{Spec: "swtpm://" + proxy}); err != nil {
			t.Fatalf("open after a cut connection: %v", err)
		}
		defer tp.Close()
		failed = true
	}
	if rsp, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp); err != nil || len(rsp.RandomBytes.Buffer) != 8 {
		t.Fatalf("after reconnecting: %v", err)
	}
	t.Logf("opened %v, connections %d", tp != nil, conns.Load())
	if !failed || conns.Load() < 2 {
		t.Fatalf("failed %v, connections %d: the cut was not met, or no new connection was made", failed, conns.Load())
	}
}
