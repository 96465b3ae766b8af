package tpm

import (
	"log/slog"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// AgeGatedExtend moves g's session start back by d, as if it had started
// that long ago (PrepareGatedExtendAgain's proof-lifetime bound).
func AgeGatedExtend(g *GatedExtend, d time.Duration) { AgePolicySession(g.s, d) }

// AgePolicySession moves p's start back by d, as if it had started that
// long ago (Spare's proof-lifetime bound).
func AgePolicySession(p *PolicySession, d time.Duration) { p.started = p.started.Add(-d) }

// SpareHandle is the handle of the operation's spare, 0 when none is kept.
func SpareHandle(t *TPM) tpm2.TPMHandle { return t.spareHandle() }

// OpenDeviceWith opens a TPM as Open opens a device at path, with open as
// the device's opener (tests: a swtpm connection standing for /dev/tpmrm0,
// rm for Options.ResourceManager).
func OpenDeviceWith(path string, open func(string) (transport.TPMCloser, error), rm bool) (*TPM, error) {
	d := &deviceTransport{path: path, open: open}
	dev, err := open(path)
	if err != nil {
		return nil, err
	}
	d.dev = dev
	return build(Options{Spec: path, ResourceManager: rm}, slog.New(slog.DiscardHandler), d, d.Close, nil, path)
}
