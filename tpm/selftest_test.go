package tpm_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// ccRecorder records the code and first parameter byte of every command.
type ccRecorder struct {
	next transport.TPM
	mu   sync.Mutex
	cmds [][2]uint32
}

func (r *ccRecorder) Send(cmd []byte) ([]byte, error) {
	r.mu.Lock()
	var first uint32
	if len(cmd) > 10 {
		first = uint32(cmd[10])
	}
	r.cmds = append(r.cmds, [2]uint32{binary.BigEndian.Uint32(cmd[6:10]), first})
	r.mu.Unlock()
	return r.next.Send(cmd)
}

// TestOpenSelfTest (issue 14): an open asks TPM2_GetTestResult and runs
// no full self-test; with FullSelfTest (the daemon at start; provd tpm selftest
// runs it itself) it runs TPM2_SelfTest(fullTest=YES) once.
func TestOpenSelfTest(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	for _, full := range []bool{false, true} {
		rec := &ccRecorder{}
		tp, err := tpm.Open(context.Background(), tpm.Options{Spec: env.Spec, Timeout: 30 * time.Second, FullSelfTest: full,
			Wrap: func(next transport.TPM) transport.TPM { rec.next = next; return rec }})
		if err != nil {
			t.Fatal(err)
		}
		tp.Close()
		var results, fullTests int
		for _, c := range rec.cmds {
			switch tpm2.TPMCC(c[0]) {
			case tpm2.TPMCCGetTestResult:
				results++
			case tpm2.TPMCCSelfTest:
				if c[1] == 1 {
					fullTests++
				}
			}
		}
		want := 0
		if full {
			want = 1
		}
		if results != 1 || fullTests != want {
			t.Fatalf("FullSelfTest %v: %d GetTestResult, %d full self-tests", full, results, fullTests)
		}
	}
	env.Reopen()
	if rc, err := env.TPM.SelfTest(true); err != nil || rc != tpm2.TPMRCSuccess {
		t.Fatalf("SelfTest: 0x%x %v", uint32(rc), err)
	}
}
