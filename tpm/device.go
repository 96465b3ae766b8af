package tpm

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/google/go-tpm/tpm2/transport"
)

// deviceTransport is a TPM character device (/dev/tpmrmN, /dev/tpmN) that
// is opened again after the kernel fails a command with EFAULT. Behind the
// kernel's resource manager that error means the connection's space is
// broken: the manager could not load or save one of the space's contexts
// (a session another connection flushed by its number, a save refused
// TPM_RC_CONTEXT_GAP), and it fails every later command of that connection
// the same way (measured in the VM test bed: after another process's
// TPM2_FlushContext of the daemon's saved session every request failed
// "write /dev/tpmrm0: bad address" until the watchdog restarted provd).
// A new open is a new space: the old one's sessions and objects are gone
// with it (the kernel flushes them at close), and the TPM's generation
// moves (onLost) so that nothing made before is used or flushed by its
// number again (TPM.ReopenedSince).
type deviceTransport struct {
	path string
	open func(path string) (transport.TPMCloser, error)
	dev  transport.TPMCloser // nil after a failure, until the next Send
	// onLost is called when the device is closed after a failure.
	onLost func()
}

// Send sends cmd, opening the device again first if a failure closed it.
// After EFAULT it is closed and the command fails: whether the TPM ran it
// is not known (the manager may have failed to save the space after it),
// so it is not resent.
func (d *deviceTransport) Send(cmd []byte) ([]byte, error) {
	if d.dev == nil {
		dev, err := d.open(d.path)
		if err != nil {
			return nil, fmt.Errorf("%w: opening %s again: %v", ErrNoTPM, d.path, err)
		}
		d.dev = dev
	}
	rsp, err := d.dev.Send(cmd)
	if err != nil && errors.Is(err, syscall.EFAULT) {
		_ = d.dev.Close()
		d.dev = nil
		if d.onLost != nil {
			d.onLost()
		}
		return nil, fmt.Errorf("%w (the device is closed: whether the TPM ran the command is not known; the next command opens it again, with nothing of this connection's left)", err)
	}
	return rsp, err
}

// Close closes the device, if open.
func (d *deviceTransport) Close() error {
	if d.dev == nil {
		return nil
	}
	err := d.dev.Close()
	d.dev = nil
	return err
}
