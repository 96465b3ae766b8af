package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/tpmproxy"
)

// daemonResult is the daemon's footprint and throughput.
type daemonResult struct {
	readyMS         float64
	rssIdleKB       int
	rssAfterKB      int
	anonAfterKB     int             // of rssAfterKB, anonymous memory (heap, stacks)
	model           *tpmproxy.Model // the load's TPM speed (nil: swtpm's)
	tpmShare        float64         // of the load's wall time, the TPM's (tpmproxy.Busy)
	requests        int
	clients, keys   int
	signsPerSec     float64
	cmdsPerRequest  float64
	binaryBytes     int64
	startupCommands int
	// times is where the load's wall time went, per command: at the TPM,
	// and the daemon's gap before each (tpmproxy.Times).
	times map[tpm2.TPMCC]tpmproxy.Times
}

// breakdown is times as one line: per command, the mean time at the TPM
// and the mean gap before it (the daemon's work and both hops), in µs.
func (d daemonResult) breakdown() string {
	ccs := make([]tpm2.TPMCC, 0, len(d.times))
	for cc := range d.times {
		ccs = append(ccs, cc)
	}
	sort.Slice(ccs, func(i, j int) bool { return d.times[ccs[i]].N > d.times[ccs[j]].N })
	var parts []string
	for _, cc := range ccs {
		t := d.times[cc]
		parts = append(parts, fmt.Sprintf("%s %d: at the TPM %.0f µs, gap before %.0f µs", tpmproxy.Name(cc), t.N,
			float64(t.AtTPM.Microseconds())/float64(t.N), float64(t.Gap.Microseconds())/float64(t.N)))
	}
	return strings.Join(parts, "; ")
}

// runDaemon starts provd serve on a fresh swtpm behind the proxy (plain),
// measures start to READY=1 and its RSS idle, then signs with keys keys
// from clients clients, requests in all, and measures RSS after.
func runDaemon(ctx context.Context, root, provd string, requests, clients, keys int, model *tpmproxy.Model) (daemonResult, error) {
	res := daemonResult{requests: requests, clients: clients, keys: keys, model: model}
	if fi, err := os.Stat(provd); err == nil {
		res.binaryBytes = fi.Size()
	}
	w, err := newWorkspace(ctx, root, "daemon", 1)
	if err != nil {
		return res, err
	}
	defer w.close()
	if err := w.exec([]string{provd, "--tpm", "{tpm}", "provision", "--trust-on-first-use", "--pcrs", "7"}); err != nil {
		return res, err
	}
	for i := range keys {
		if err := w.exec([]string{provd, "--tpm", "{tpm}", "key", "create", fmt.Sprintf("k%d", i), "--type", "ecc-p256"}); err != nil {
			return res, err
		}
	}
	notify := filepath.Join(w.dir, "notify.sock")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		return res, err
	}
	defer nl.Close()
	sock := filepath.Join(w.dir, "provd.sock")
	w.reset()
	cmd := exec.Command(provd, "--tpm", "swtpm://"+w.tpms[0].proxy.Addr, "--state-dir", filepath.Join(w.dir, "state"), "serve", "--socket", sock, "--socket-group", "")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	buf := make([]byte, 4096)
	_ = nl.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		n, _, err := nl.ReadFromUnix(buf)
		if err != nil {
			return res, fmt.Errorf("provd serve sent no READY=1: %w", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			break
		}
	}
	res.readyMS = float64(time.Since(start).Microseconds()) / 1000
	res.startupCommands = w.total()
	time.Sleep(200 * time.Millisecond)
	if res.rssIdleKB, err = rssKB(cmd.Process.Pid); err != nil {
		return res, err
	}
	digest := sha256.Sum256([]byte("daemon"))
	// Warm every key once, then measure.
	c := client.New(sock)
	for i := range keys {
		if _, err := c.Sign(ctx, fmt.Sprintf("k%d", i), digest[:], api.SignOptions{}); err != nil {
			return res, err
		}
	}
	c.Close()
	w.tpms[0].proxy.SetModel(model) // the load only; set-up at swtpm's speed
	w.reset()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client.New(sock)
			defer c.Close()
			for {
				i := next.Add(1) - 1
				if i >= int64(requests) {
					return
				}
				if _, err := c.Sign(ctx, "k"+strconv.Itoa(int(i+int64(g))%keys), digest[:], api.SignOptions{}); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return res, err
	}
	elapsed := time.Since(t0)
	res.signsPerSec = float64(requests) / elapsed.Seconds()
	res.cmdsPerRequest = float64(w.total()) / float64(requests)
	res.tpmShare = float64(w.tpms[0].proxy.Busy()) / float64(elapsed)
	res.times = w.tpms[0].proxy.Times()
	res.rssAfterKB, err = rssKB(cmd.Process.Pid)
	if err == nil {
		res.anonAfterKB, err = statusKB(cmd.Process.Pid, "RssAnon:")
	}
	return res, err
}

// rssKB reads VmRSS of pid.
func rssKB(pid int) (int, error) { return statusKB(pid, "VmRSS:") }

// statusKB reads the kB figure field (VmRSS:, RssAnon:, ...) of pid's
// /proc status.
func statusKB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}
