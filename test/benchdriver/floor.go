package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// floorResult is what a client that does nothing between its commands
// gets from swtpm behind the proxy: the least gap each command costs on
// this machine (both hops and a process's wake-up), against which the
// daemon's share inside the TPM is read.
type floorResult struct {
	commands int
	atTPM    time.Duration // mean, per command
	gap      time.Duration // mean, per command
	share    float64
}

// floorClientFlag runs this binary as the floor's client (runFloor): it
// sends TPM2_GetRandom(8) n times to the address, one after the other.
const floorClientFlag = "floor-client"

// runFloor starts a swtpm behind the proxy and a client process that
// sends n TPM2_GetRandom back to back (a command swtpm answers at once),
// and measures the time at the TPM and the gap before each command.
func runFloor(ctx context.Context, root string, n int) (floorResult, error) {
	var res floorResult
	w, err := newWorkspace(ctx, root, "floor", 1)
	if err != nil {
		return res, err
	}
	defer w.close()
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	w.reset()
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, self, "-"+floorClientFlag, w.tpms[0].proxy.Addr, "-floor-n", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("floor client: %w", err)
	}
	elapsed := time.Since(t0)
	t := w.tpms[0].proxy.Times()[tpm2.TPMCCGetRandom]
	if t.N == 0 {
		return res, fmt.Errorf("floor client: no command reached the TPM")
	}
	res.commands = t.N
	res.atTPM = t.AtTPM / time.Duration(t.N)
	res.gap = t.Gap / time.Duration(t.N)
	res.share = float64(w.tpms[0].proxy.Busy()) / float64(elapsed)
	return res, nil
}

// floorClient is the floor's client process: TPM2_Startup (an answer of
// TPM_RC_INITIALIZE says it was started), then n TPM2_GetRandom(8) to addr.
func floorClient(addr string, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	startup := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0} // TPM2_Startup(CLEAR)
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8}
	hdr := make([]byte, 10)
	body := make([]byte, 64)
	for i := -1; i < n; i++ {
		send := cmd
		if i < 0 {
			send = startup
		}
		if _, err := c.Write(send); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, hdr); err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint32(hdr[2:6]))
		if size < 10 || size > 10+len(body) {
			return fmt.Errorf("a response of %d bytes", size)
		}
		if _, err := io.ReadFull(c, body[:size-10]); err != nil {
			return err
		}
		if rc := binary.BigEndian.Uint32(hdr[6:10]); rc != 0 && (i >= 0 || rc != uint32(tpm2.TPMRCInitialize)) {
			return fmt.Errorf("command %d: rc %#x", i, rc)
		}
	}
	return nil
}
