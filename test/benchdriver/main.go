// Command benchdriver measures provd and tpm2-tools doing the same job in
// the same run (issue 14, docs/benchmarks.md): each tool on a fresh swtpm
// behind test/tpmproxy, which counts the TPM commands either sends and, for
// the hardware model, holds each response as a discrete TPM would. Runs
// alternate A B A B; the tables give medians. `make bench` runs it and
// writes the tables into docs/benchmarks.md between its markers.
//
//	go run ./test/benchdriver -provd bin/provd -runs 10 -update docs/benchmarks.md
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/provd/provd/test/tpmproxy"
	"github.com/provd/provd/tpm/swtpm"
)

func main() {
	provd := flag.String("provd", "bin/provd", "the provd binary")
	runs := flag.Int("runs", 10, "runs of each measured step, per tool (medians)")
	hwRuns := flag.Int("hardware-runs", 5, "runs on the hardware model (each costs seconds)")
	daemonRequests := flag.Int("daemon-requests", 20000, "signs through the daemon, from 32 clients over 4 keys (0: skip)")
	update := flag.String("update", "", "a markdown file whose section between the benchdriver markers is replaced (else stdout)")
	sequence := flag.Bool("sequence", false, "print each tool's TPM commands in order (first run of each scenario) on stderr")
	flag.Parse()
	if *sequence {
		sequenceOut = os.Stderr
	}
	if err := run(*provd, *runs, *hwRuns, *daemonRequests, *update); err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver:", err)
		os.Exit(1)
	}
}

// sequenceOut, when set (-sequence), receives each tool's commands in order.
var sequenceOut io.Writer

// A tool's side of a scenario: setup (untimed, on plain swtpm speed) and
// the measured step, each a list of commands (argv) run in order.
type side struct {
	files       map[string][]byte // written into the workspace first
	setup, step [][]string
}

// scenario is one job both tools do.
type scenario struct {
	name    string
	provd   side
	tools   side
	minimum string // the minimal command sequence, for the table
}

// workspace is one tool's swtpm, proxy and files for one scenario.
type workspace struct {
	dir   string
	proc  *swtpm.Process
	proxy *tpmproxy.Proxy
}

func (w *workspace) close() {
	if w.proxy != nil {
		w.proxy.Close()
	}
	if w.proc != nil {
		_ = w.proc.Stop()
	}
}

func newWorkspace(ctx context.Context, root, name string) (*workspace, error) {
	w := &workspace{dir: filepath.Join(root, name)}
	state, ca := filepath.Join(w.dir, "tpm"), filepath.Join(w.dir, "ca")
	if err := swtpm.Manufacture(ctx, state, ca); err != nil {
		return nil, err
	}
	var err error
	if w.proc, err = swtpm.Start(ctx, state); err != nil {
		return nil, err
	}
	if w.proxy, err = tpmproxy.Start(w.proc.Addr, w.proc.CtrlAddr, nil); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

// expand replaces {dir}, {tpm} (provd's --tpm) and {port} in argv.
func (w *workspace) expand(argv []string) []string {
	out := make([]string, len(argv))
	r := strings.NewReplacer("{dir}", w.dir, "{tpm}", "swtpm://"+w.proxy.Addr, "{port}", strconv.Itoa(w.proxy.Port))
	for i, a := range argv {
		out[i] = r.Replace(a)
	}
	return out
}

func (w *workspace) exec(argv []string) error {
	argv = w.expand(argv)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = w.dir
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port="+strconv.Itoa(w.proxy.Port), "PROVD_STATE_DIR="+filepath.Join(w.dir, "state"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out.String())
	}
	return nil
}

// measure runs the step once and returns its wall time and TPM commands.
func (w *workspace) measure(step [][]string) (time.Duration, int, error) {
	w.proxy.Reset()
	start := time.Now()
	for _, argv := range step {
		if err := w.exec(argv); err != nil {
			return 0, 0, err
		}
	}
	return time.Since(start), w.proxy.Total(), nil
}

// result is one scenario on one model: medians per tool.
type result struct {
	name, minimum        string
	provdMS, toolsMS     float64
	provdCmds, toolsCmds int
	provdRuns, toolsRuns int
	provdMix, toolsMix   string // the last run's commands by code
}

func median(ds []time.Duration) float64 {
	slices.Sort(ds)
	return float64(ds[len(ds)/2].Microseconds()) / 1000
}

func runScenario(ctx context.Context, root string, sc scenario, model *tpmproxy.Model, runs int) (result, error) {
	res := result{name: sc.name, minimum: sc.minimum, provdRuns: runs, toolsRuns: runs}
	var ws [2]*workspace
	for i, name := range []string{"provd", "tools"} {
		w, err := newWorkspace(ctx, root, name) // root is the scenario's: no comma in swtpm's paths
		if err != nil {
			return res, err
		}
		defer w.close()
		ws[i] = w
	}
	sides := [2]side{sc.provd, sc.tools}
	for i, s := range sides {
		for name, b := range s.files {
			if err := os.WriteFile(filepath.Join(ws[i].dir, name), b, 0o600); err != nil {
				return res, err
			}
		}
		for _, argv := range s.setup {
			if err := ws[i].exec(argv); err != nil {
				return res, fmt.Errorf("%s setup: %w", sc.name, err)
			}
		}
		ws[i].proxy.SetModel(model)
	}
	var times [2][]time.Duration
	var cmds [2][]int
	for r := range runs {
		for k := range 2 {
			i := k
			if r%2 == 1 { // A B, then B A: neither always goes first
				i = 1 - k
			}
			d, n, err := ws[i].measure(sides[i].step)
			if err != nil {
				return res, err
			}
			if sequenceOut != nil && r == 0 {
				fmt.Fprintf(sequenceOut, "%s, %s (%d): %v\n", sc.name, []string{"provd", "tpm2-tools"}[i], n, ws[i].proxy.Sequence())
			}
			if i == 0 {
				res.provdMix = tpmproxy.Mix(ws[i].proxy.Counts())
			} else {
				res.toolsMix = tpmproxy.Mix(ws[i].proxy.Counts())
			}
			times[i] = append(times[i], d)
			cmds[i] = append(cmds[i], n)
		}
	}
	res.provdMS, res.toolsMS = median(times[0]), median(times[1])
	slices.Sort(cmds[0])
	slices.Sort(cmds[1])
	res.provdCmds, res.toolsCmds = cmds[0][len(cmds[0])/2], cmds[1][len(cmds[1])/2]
	return res, nil
}

func scenarios(provd string) []scenario {
	digest := sha256.Sum256([]byte("benchdriver"))
	provision := []string{provd, "--tpm", "{tpm}", "provision", "--trust-on-first-use", "--pcrs", "7"}
	return []scenario{
		{
			name: "sign, warm (ECC P-256, one digest)",
			provd: side{
				setup: [][]string{provision, {provd, "--tpm", "{tpm}", "key", "create", "k", "--type", "ecc-p256"}},
				step:  [][]string{{provd, "--tpm", "{tpm}", "key", "sign", "k", "--digest", hex.EncodeToString(digest[:]), "--out", "{dir}/sig"}},
			},
			tools: side{
				setup: [][]string{
					{"tpm2_startup", "-c"},
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_create", "-C", "{dir}/prim.ctx", "-G", "ecc256", "-u", "{dir}/k.pub", "-r", "{dir}/k.priv"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_load", "-C", "{dir}/prim.ctx", "-u", "{dir}/k.pub", "-r", "{dir}/k.priv", "-c", "{dir}/k.ctx"},
					{"tpm2_evictcontrol", "-C", "o", "-c", "{dir}/k.ctx", "0x81000010"},
					{"tpm2_flushcontext", "-t"},
				},
				files: map[string][]byte{"digest": digest[:]},
				step:  [][]string{{"tpm2_sign", "-c", "0x81000010", "-g", "sha256", "-d", "-o", "{dir}/sig", "{dir}/digest"}},
			},
			minimum: "Sign (a loaded key, a password or kept session): 1; one-shot: + load and a policy session",
		},
		{
			name: "create an RSA-2048 key and sign one digest",
			provd: side{
				setup: [][]string{provision},
				step: [][]string{{"sh", "-c", provd + " --tpm {tpm} key create r$$ --type rsa-2048 >/dev/null && " +
					provd + " --tpm {tpm} key sign r$$ --digest " + hex.EncodeToString(digest[:]) + " --out {dir}/sig"}},
			},
			tools: side{
				setup: [][]string{
					{"tpm2_startup", "-c"},
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
					{"tpm2_evictcontrol", "-C", "o", "-c", "{dir}/prim.ctx", "0x81000001"},
					{"tpm2_flushcontext", "-t"},
				},
				files: map[string][]byte{"digest": digest[:]},
				step: [][]string{
					{"tpm2_create", "-C", "0x81000001", "-G", "rsa2048", "-u", "{dir}/r.pub", "-r", "{dir}/r.priv"},
					{"tpm2_load", "-C", "0x81000001", "-u", "{dir}/r.pub", "-r", "{dir}/r.priv", "-c", "{dir}/r.ctx"},
					{"tpm2_sign", "-c", "{dir}/r.ctx", "-g", "sha256", "-d", "-o", "{dir}/sig", "{dir}/digest"},
					{"tpm2_flushcontext", "-t"},
				},
			},
			minimum: "Create (under a resident SRK), Load, Sign, Flush: 4",
		},
		{
			name: "seal 32 B to PCRs 7 and 16",
			provd: side{
				setup: [][]string{provision, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"}},
				step:  [][]string{{provd, "--tpm", "{tpm}", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"}},
			},
			tools: side{
				setup: [][]string{{"tpm2_startup", "-c"}, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"}},
				step: [][]string{
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_pcrread", "-o", "{dir}/pcr.bin", "sha256:7,16"},
					{"tpm2_createpolicy", "--policy-pcr", "-l", "sha256:7,16", "-f", "{dir}/pcr.bin", "-L", "{dir}/pol.bin"},
					{"tpm2_flushcontext", "-l"},
					{"tpm2_create", "-C", "{dir}/prim.ctx", "-L", "{dir}/pol.bin", "-i", "{dir}/secret", "-u", "{dir}/s.pub", "-r", "{dir}/s.priv"},
					{"tpm2_flushcontext", "-t"},
				},
			},
			minimum: "CreatePrimary (or a resident parent), PCR_Read, Create, Flush: 3 under a resident SRK",
		},
		{
			name: "unseal it",
			provd: side{
				setup: [][]string{provision, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"},
					{provd, "--tpm", "{tpm}", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"}},
				step: [][]string{{provd, "--tpm", "{tpm}", "unseal", "--in", "{dir}/sealed", "--out", "{dir}/out"}},
			},
			tools: side{
				setup: [][]string{{"tpm2_startup", "-c"}, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"},
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_pcrread", "-o", "{dir}/pcr.bin", "sha256:7,16"},
					{"tpm2_createpolicy", "--policy-pcr", "-l", "sha256:7,16", "-f", "{dir}/pcr.bin", "-L", "{dir}/pol.bin"},
					{"tpm2_flushcontext", "-l"},
					{"tpm2_create", "-C", "{dir}/prim.ctx", "-L", "{dir}/pol.bin", "-i", "{dir}/secret", "-u", "{dir}/s.pub", "-r", "{dir}/s.priv"},
					{"tpm2_flushcontext", "-t"}},
				step: [][]string{
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_load", "-C", "{dir}/prim.ctx", "-u", "{dir}/s.pub", "-r", "{dir}/s.priv", "-c", "{dir}/s.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"sh", "-c", "tpm2_unseal -c {dir}/s.ctx -p pcr:sha256:7,16 > {dir}/out"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_flushcontext", "-l"},
				},
			},
			minimum: "Load, StartAuthSession, PolicyPCR, Unseal, Flush: 5 under a resident SRK",
		},
	}
}

func run(provd string, runs, hwRuns, daemonRequests int, update string) error {
	ctx := context.Background()
	if _, err := os.Stat(provd); err != nil {
		return fmt.Errorf("%s: %w (make build)", provd, err)
	}
	provd, _ = filepath.Abs(provd)
	for _, t := range []string{"tpm2_sign", "tpm2_unseal", "swtpm"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s is not installed (Debian packages tpm2-tools, swtpm, swtpm-tools)", t)
		}
	}
	root, err := os.MkdirTemp("", "provd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Measured %s by `go run ./test/benchdriver` (`make bench`) on %s, %d cores, %s/%s; swtpm per tool behind test/tpmproxy; one-shot processes (each run a new provd or tpm2-tools process).\n\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	for _, m := range []struct {
		model *tpmproxy.Model
		runs  int
	}{{nil, runs}, {&tpmproxy.Hardware, hwRuns}} {
		if m.runs == 0 {
			continue
		}
		name := "plain swtpm"
		if m.model != nil {
			name = "the hardware model"
		}
		fmt.Fprintf(&b, "On %s (medians of %d runs each, interleaved):\n\n", name, m.runs)
		b.WriteString("| operation | provd ms | provd TPM cmds | tpm2-tools ms | tpm2-tools TPM cmds | ratio (time) | minimal sequence |\n| --- | --- | --- | --- | --- | --- | --- |\n")
		var mixes []string
		for i, sc := range scenarios(provd) {
			dir := filepath.Join(root, fmt.Sprintf("m%d-s%d", len(b.String())%1000, i))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			r, err := runScenario(ctx, dir, sc, m.model, m.runs)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "| %s | %.1f | %d | %.1f | %d | %.2f | %s |\n", r.name, r.provdMS, r.provdCmds, r.toolsMS, r.toolsCmds, r.provdMS/r.toolsMS, r.minimum)
			fmt.Fprintf(os.Stderr, "%s, %s: provd %.1f ms %d cmds; tpm2-tools %.1f ms %d cmds\n", name, r.name, r.provdMS, r.provdCmds, r.toolsMS, r.toolsCmds)
			mixes = append(mixes, fmt.Sprintf("- %s: provd: %s; tpm2-tools: %s\n", r.name, r.provdMix, r.toolsMix))
		}
		b.WriteString("\n")
		if m.model == nil {
			b.WriteString("The commands of each (one run):\n\n")
			for _, l := range mixes {
				b.WriteString(l)
			}
			b.WriteString("\n")
		}
	}
	if daemonRequests > 0 {
		dir := filepath.Join(root, "daemon")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		for _, keys := range []int{1, 4} {
			d, err := runDaemon(ctx, dir+strconv.Itoa(keys), provd, daemonRequests, 32, keys)
			if err != nil {
				return fmt.Errorf("daemon: %w", err)
			}
			if keys == 1 {
				fmt.Fprintf(&b, "The daemon (`provd serve`, plain swtpm; binary %.1f MB): start to READY=1 %.0f ms (%d TPM commands); RSS idle %.1f MB.\n\n",
					float64(d.binaryBytes)/(1<<20), d.readyMS, d.startupCommands, float64(d.rssIdleKB)/1024)
				b.WriteString("| signs through the daemon | signs/s | TPM commands/request | RSS after |\n| --- | --- | --- | --- |\n")
			}
			fmt.Fprintf(&b, "| %d from %d clients over %d key(s) | %.0f | %.2f | %.1f MB |\n", d.requests, d.clients, d.keys, d.signsPerSec, d.cmdsPerRequest, float64(d.rssAfterKB)/1024)
			fmt.Fprintf(os.Stderr, "daemon, %d keys: %.0f signs/s, %.2f cmds/request, RSS %d -> %d kB, ready %.0f ms\n", keys, d.signsPerSec, d.cmdsPerRequest, d.rssIdleKB, d.rssAfterKB, d.readyMS)
		}
		b.WriteString("\n")
	}
	if update == "" {
		_, err := io.WriteString(os.Stdout, b.String())
		return err
	}
	return replaceSection(update, b.String())
}

const (
	beginMarker = "<!-- benchdriver:begin -->"
	endMarker   = "<!-- benchdriver:end -->"
)

// replaceSection writes section between the markers of the markdown file.
func replaceSection(path, section string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(doc)
	a, b := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if a < 0 || b < a {
		return errors.New(path + ": no benchdriver markers")
	}
	s = s[:a+len(beginMarker)] + "\n" + section + s[b:]
	return os.WriteFile(path, []byte(s), 0o644)
}
