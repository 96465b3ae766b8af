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
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
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
	only := flag.String("run", "", "only the scenarios whose name matches this regular expression")
	floorAddr := flag.String(floorClientFlag, "", "(internal) run as the floor's client against this address")
	floorN := flag.Int("floor-n", 0, "(internal) the floor client's commands")
	flag.Parse()
	if *floorAddr != "" {
		if err := floorClient(*floorAddr, *floorN); err != nil {
			fmt.Fprintln(os.Stderr, "benchdriver floor client:", err)
			os.Exit(1)
		}
		return
	}
	if *sequence {
		sequenceOut = os.Stderr
	}
	filter, err := regexp.Compile(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver: -run:", err)
		os.Exit(2)
	}
	if err := run(*provd, *runs, *hwRuns, *daemonRequests, *update, filter); err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver:", err)
		os.Exit(1)
	}
}

// sequenceOut, when set (-sequence), receives each tool's commands in order.
var sequenceOut io.Writer

// A tool's side of a scenario: setup (untimed, on plain swtpm speed), the
// measured step, and what puts the TPM back after each step for the next
// (untimed, uncounted), each a list of commands (argv) run in order. A
// setup command made by background runs until the scenario ends.
type side struct {
	files              map[string][]byte // written into the workspace first
	setup, step, after [][]string
}

// scenario is one job both tools do.
type scenario struct {
	name    string
	provd   side
	tools   side
	minimum string // the minimal command sequence, for the table
	// twoTPMs gives each tool a second swtpm, {tpm2} and {port2}; the
	// counts are both TPMs' commands together.
	twoTPMs bool
	// toolsNoTPM: the other side's job needs no TPM (0 commands).
	toolsNoTPM bool
	// runsTimes multiplies the runs (0: 1): for a row whose time is a
	// random draw of the TPM's (RSA key generation's prime search, from
	// tens of ms to a second on swtpm), so that its medians compare the
	// tools rather than the draws.
	runsTimes int
	// less is a command whose time at the TPM the row also reports each
	// tool's time without (0: none): for RSA key generation, whose prime
	// search is a random draw no number of runs averages out, so that
	// the tools' own costs can be compared.
	less tpm2.TPMCC
}

// backgroundMark starts a setup command that background made.
const backgroundMark = "{background}"

// background is a setup command that keeps running (a daemon, an
// endpoint) until the scenario ends; its stdout and stderr go to log (a
// path under {dir}), and setup goes on once that file holds ready.
func background(log, ready string, argv ...string) []string {
	return append([]string{backgroundMark, log, ready}, argv...)
}

// tpmEnd is one swtpm and the proxy in front of it.
type tpmEnd struct {
	proc  *swtpm.Process
	proxy *tpmproxy.Proxy
}

func startTPM(ctx context.Context, dir string) (tpmEnd, error) {
	var t tpmEnd
	state, ca := filepath.Join(dir, "tpm"), filepath.Join(dir, "ca")
	if err := swtpm.Manufacture(ctx, state, ca); err != nil {
		return t, err
	}
	var err error
	if t.proc, err = swtpm.Start(ctx, state); err != nil {
		return t, err
	}
	if t.proxy, err = tpmproxy.Start(t.proc.Addr, t.proc.CtrlAddr, nil); err != nil {
		t.close()
		return t, err
	}
	return t, nil
}

func (t tpmEnd) close() {
	if t.proxy != nil {
		t.proxy.Close()
	}
	if t.proc != nil {
		_ = t.proc.Stop()
	}
}

// workspace is one tool's swtpm (or two), proxies, background processes
// and files for one scenario.
type workspace struct {
	dir  string
	tpms []tpmEnd // the second, {tpm2}, when the scenario has two TPMs
	bg   []process
}

// process is a background command and the end of its Wait.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// close stops the background processes (SIGINT, SIGKILL after 10 s), then
// the TPMs.
func (w *workspace) close() {
	for i := len(w.bg) - 1; i >= 0; i-- {
		stopProcess(w.bg[i])
	}
	for _, t := range w.tpms {
		t.close()
	}
}

// stopProcess interrupts p's process, waits for it, and kills it when it
// has not ended within 10 s.
func stopProcess(p process) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func newWorkspace(ctx context.Context, root, name string, tpms int) (*workspace, error) {
	w := &workspace{dir: filepath.Join(root, name)}
	for i := range tpms {
		dir := w.dir
		if i > 0 {
			dir = filepath.Join(w.dir, "b")
		}
		t, err := startTPM(ctx, dir)
		if err != nil {
			w.close()
			return nil, err
		}
		w.tpms = append(w.tpms, t)
	}
	return w, nil
}

// expand replaces {dir}, {tpm} (provd's --tpm), {port} and, with a second
// TPM, {dir2} (its directory, where its manufacturer CA is), {tpm2} and
// {port2} in argv.
func (w *workspace) expand(argv []string) []string {
	t := w.tpms[0]
	pairs := []string{"{dir2}", filepath.Join(w.dir, "b"), "{dir}", w.dir, "{tpm}", "swtpm://" + t.proxy.Addr, "{port}", strconv.Itoa(t.proxy.Port)}
	if len(w.tpms) > 1 {
		t2 := w.tpms[1]
		pairs = append(pairs, "{tpm2}", "swtpm://"+t2.proxy.Addr, "{port2}", strconv.Itoa(t2.proxy.Port))
	}
	r := strings.NewReplacer(pairs...)
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = r.Replace(a)
	}
	return out
}

func (w *workspace) command(argv []string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = w.dir
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port="+strconv.Itoa(w.tpms[0].proxy.Port), "PROVD_STATE_DIR="+filepath.Join(w.dir, "state"))
	return cmd
}

func (w *workspace) exec(argv []string) error {
	argv = w.expand(argv)
	if argv[0] == backgroundMark {
		return w.startBackground(argv[1], argv[2], argv[3:])
	}
	cmd := w.command(argv)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out.String())
	}
	return nil
}

// startBackground starts argv with its output in log and waits (up to a
// minute) until log holds ready; close stops it.
func (w *workspace) startBackground(log, ready string, argv []string) error {
	f, err := os.Create(log)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := w.command(argv)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	w.bg = append(w.bg, process{cmd, exited})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(log); bytes.Contains(b, []byte(ready)) {
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(log)
			return fmt.Errorf("%s: ended before %q\n%s", strings.Join(argv, " "), ready, b)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: no %q in %s within a minute", strings.Join(argv, " "), ready, log)
}

// reset zeroes every proxy's counters.
func (w *workspace) reset() {
	for _, t := range w.tpms {
		t.proxy.Reset()
	}
}

// total is the commands every TPM of w took since the last reset.
func (w *workspace) total() int {
	n := 0
	for _, t := range w.tpms {
		n += t.proxy.Total()
	}
	return n
}

// counts is the commands of every TPM by code since the last reset.
func (w *workspace) counts() map[tpm2.TPMCC]int {
	all := map[tpm2.TPMCC]int{}
	for _, t := range w.tpms {
		for cc, n := range t.proxy.Counts() {
			all[cc] += n
		}
	}
	return all
}

// atTPM is the time every TPM of w spent in commands cc since the last
// reset.
func (w *workspace) atTPM(cc tpm2.TPMCC) time.Duration {
	var d time.Duration
	for _, t := range w.tpms {
		d += t.proxy.Times()[cc].AtTPM
	}
	return d
}

// sequence is each TPM's commands in order, the second's after "TPM B:".
func (w *workspace) sequence() string {
	s := fmt.Sprint(w.tpms[0].proxy.Sequence())
	if len(w.tpms) > 1 {
		s = "TPM A: " + s + "; TPM B: " + fmt.Sprint(w.tpms[1].proxy.Sequence())
	}
	return s
}

func (w *workspace) setModel(m *tpmproxy.Model) {
	for _, t := range w.tpms {
		t.proxy.SetModel(m)
	}
}

// measure runs the step once and returns its wall time and TPM commands.
func (w *workspace) measure(step [][]string) (time.Duration, int, error) {
	w.reset()
	start := time.Now()
	for _, argv := range step {
		if err := w.exec(argv); err != nil {
			return 0, 0, err
		}
	}
	return time.Since(start), w.total(), nil
}

// result is one scenario on one model: medians per tool.
type result struct {
	name, minimum        string
	provdMS, toolsMS     float64
	provdCmds, toolsCmds int
	provdRuns, toolsRuns int
	provdMix, toolsMix   string // the last run's commands by code
	// provdLessMS, toolsLessMS are the medians without scenario.less's
	// time at the TPM (0: the scenario has none).
	provdLessMS, toolsLessMS float64
}

func median(ds []time.Duration) float64 {
	slices.Sort(ds)
	return float64(ds[len(ds)/2].Microseconds()) / 1000
}

func runScenario(ctx context.Context, root string, sc scenario, model *tpmproxy.Model, runs int) (result, error) {
	res := result{name: sc.name, minimum: sc.minimum, provdRuns: runs, toolsRuns: runs}
	tpms := 1
	if sc.twoTPMs {
		tpms = 2
	}
	var ws [2]*workspace
	for i, name := range []string{"provd", "tools"} {
		w, err := newWorkspace(ctx, root, name, tpms) // root is the scenario's: no comma in swtpm's paths
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
		ws[i].setModel(model)
	}
	var times, less [2][]time.Duration
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
			seq, mix := ws[i].sequence(), tpmproxy.Mix(ws[i].counts())
			for _, argv := range sides[i].after {
				if err := ws[i].exec(argv); err != nil {
					return res, fmt.Errorf("%s, after the step: %w", sc.name, err)
				}
			}
			if sequenceOut != nil && r == 0 {
				fmt.Fprintf(sequenceOut, "%s, %s (%d): %s\n", sc.name, []string{"provd", "tpm2-tools"}[i], n, seq)
			}
			if i == 0 {
				res.provdMix = mix
			} else {
				res.toolsMix = mix
			}
			times[i] = append(times[i], d)
			cmds[i] = append(cmds[i], n)
			if sc.less != 0 {
				less[i] = append(less[i], d-ws[i].atTPM(sc.less))
			}
		}
	}
	res.provdMS, res.toolsMS = median(times[0]), median(times[1])
	if sc.less != 0 {
		res.provdLessMS, res.toolsLessMS = median(less[0]), median(less[1])
	}
	slices.Sort(cmds[0])
	slices.Sort(cmds[1])
	res.provdCmds, res.toolsCmds = cmds[0][len(cmds[0])/2], cmds[1][len(cmds[1])/2]
	return res, nil
}

// toolsAnchorAttrs is an extend NV index as provd's audit anchor, written
// with the owner's authorization where provd's is written through a gate
// key's policy.
const toolsAnchorAttrs = "nt=extend|ownerwrite|authread|ownerread|no_da"

// provdDupSetup is the ceremony of scripts/demo.sh for a key moved from
// TPM A to TPM B: sh setup-dup.sh PROVD TPM-A TPM-B DIR DIR-B (DIR-B
// holds B's manufacturer CA). A's state is the default one ($PROVD_STATE_DIR).
const provdDupSetup = `set -eu
provd=$1 a=$2 b=$3 dir=$4 dirb=$5
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/officer.pem" 2>/dev/null
openssl pkey -in "$dir/officer.pem" -pubout -out "$dir/officer.pub.pem"
cat "$dirb/ca/swtpm-localca-rootca-cert.pem" "$dirb/ca/issuercert.pem" > "$dir/ek-ca-b.pem"
"$provd" --tpm "$a" provision --trust-on-first-use --pcrs 7 --officer-key "$dir/officer.pub.pem" >/dev/null
"$provd" --tpm "$b" --state-dir "$dir/state-b" provision --ek-ca "$dir/ek-ca-b.pem" --pcrs 7 --officer-key "$dir/officer.pub.pem" >/dev/null
"$provd" --tpm "$b" --state-dir "$dir/state-b" peer identity --out "$dir/b.peer.json"
"$provd" peer challenge --to "$dir/b.peer.json" --ek-ca "$dir/ek-ca-b.pem" --out "$dir/b.challenge.json"
"$provd" --tpm "$b" --state-dir "$dir/state-b" peer prove --challenge "$dir/b.challenge.json" --out "$dir/b.proof.json"
hex() { grep -o "\"$1\": *\"[0-9a-f]*\"" | head -1 | grep -o '[0-9a-f]\{20,\}'; }
pkb=$("$provd" --tpm "$b" --state-dir "$dir/state-b" status -o json | hex pk_name)
pkpolicy=$("$provd" --tpm "$a" status -o json | hex policy_digest)
"$provd" --tpm "$a" key create mover --type ecc-p256 --extractable >/dev/null
mover=$("$provd" --tpm "$a" key pub mover -o json | hex object_name)
"$provd" key approve --officer "$dir/officer.pem" --pk-policy "$pkpolicy" --dup-to "$dir/b.peer.json" --peer-pk "$pkb" \
  --challenge "$dir/b.challenge.json" --proof "$dir/b.proof.json" --object-name "$mover" --out "$dir/mover.approval.json"
`

// toolsDupSetup makes, with tpm2-tools, a persistent storage key on each
// TPM, B's public part for A, and on A a key that PolicyCommandCode
// (Duplicate) lets leave: sh setup-dup.sh DIR B-PORT (A is $TPM2TOOLS_TCTI).
const toolsDupSetup = `set -eu
dir=$1 b="swtpm:host=127.0.0.1,port=$2"
tpm2_startup -c
tpm2_startup -c -T "$b"
tpm2_createprimary -T "$b" -C o -g sha256 -G ecc256 -c "$dir/b-prim.ctx" >/dev/null
tpm2_evictcontrol -T "$b" -C o -c "$dir/b-prim.ctx" 0x81000001 >/dev/null
tpm2_flushcontext -T "$b" -t
tpm2_readpublic -T "$b" -c 0x81000001 -o "$dir/b-srk.pub" >/dev/null
tpm2_createprimary -C o -g sha256 -G ecc256 -c "$dir/prim.ctx" >/dev/null
tpm2_evictcontrol -C o -c "$dir/prim.ctx" 0x81000001 >/dev/null
tpm2_flushcontext -t
tpm2_startauthsession -S "$dir/trial.ctx"
tpm2_policycommandcode -S "$dir/trial.ctx" -L "$dir/dup.policy" TPM2_CC_Duplicate >/dev/null
tpm2_flushcontext "$dir/trial.ctx"
tpm2_create -C 0x81000001 -g sha256 -G ecc256 -L "$dir/dup.policy" -a "sensitivedataorigin|userwithauth|sign" -u "$dir/k.pub" -r "$dir/k.priv" >/dev/null
tpm2_flushcontext -t
`

// size is how much work the scenarios whose job has a size do: the
// benchmark's (fullSize) or a test's smaller one.
type size struct {
	signs    int // digests the key signs
	imageMiB int // the size of each of four firmware images
}

var fullSize = size{signs: 100, imageMiB: 16}

// signTools is tpm2-tools' warm sign: tpm2_sign on a persistent P-256 key.
func signTools(digest []byte) side {
	return side{
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
		files: map[string][]byte{"digest": digest},
		step:  [][]string{{"tpm2_sign", "-c", "0x81000010", "-g", "sha256", "-d", "-o", "{dir}/sig", "{dir}/digest"}},
	}
}

func scenarios(provd string, sz size) []scenario {
	digest := sha256.Sum256([]byte("benchdriver"))
	provision := []string{provd, "--tpm", "{tpm}", "provision", "--trust-on-first-use", "--pcrs", "7"}
	// tpm2-tools' seal and unseal: a primary key made each time, a PCR
	// policy over PCRs 7 and 16.
	sealTools := side{
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
	}
	unsealTools := side{
		setup: slices.Concat(sealTools.setup, sealTools.step), // sealed once
		step: [][]string{
			{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
			{"tpm2_flushcontext", "-t"},
			{"tpm2_load", "-C", "{dir}/prim.ctx", "-u", "{dir}/s.pub", "-r", "{dir}/s.priv", "-c", "{dir}/s.ctx"},
			{"tpm2_flushcontext", "-t"},
			{"sh", "-c", "tpm2_unseal -c {dir}/s.ctx -p pcr:sha256:7,16 > {dir}/out"},
			{"tpm2_flushcontext", "-t"},
			{"tpm2_flushcontext", "-l"},
		},
	}
	// provd's daemon, as a device runs it: provd.service serves, and the
	// CLI (no --tpm) goes through its socket.
	serve := background("{dir}/serve.log", "msg=ready", provd, "--tpm", "{tpm}", "serve", "--socket", "{dir}/provd.sock", "--socket-group", "")
	images := []string{"sh", "-c", fmt.Sprintf("mkdir -p {dir}/images && for i in 1 2 3 4; do head -c %dM /dev/urandom > {dir}/images/image$i.bin; done", sz.imageMiB)}
	return []scenario{
		{
			name: "sign, warm (ECC P-256, one digest)",
			provd: side{
				setup: [][]string{provision, {provd, "--tpm", "{tpm}", "key", "create", "k", "--type", "ecc-p256"}},
				step:  [][]string{{provd, "--tpm", "{tpm}", "key", "sign", "k", "--digest", hex.EncodeToString(digest[:]), "--out", "{dir}/sig"}},
			},
			tools:   signTools(digest[:]),
			minimum: "Sign (a loaded key, a password or kept session): 1; one-shot: + load and a policy session",
		},
		{
			// The same job as a device runs it: provd.service serves, and
			// `provd key sign` (no --tpm) goes through its socket, where the
			// key and its policy session stay loaded between processes.
			name: "sign, warm, as on a device: the `provd key sign` process through the running daemon, `tpm2_sign` on a persistent handle",
			provd: side{
				setup: [][]string{provision, {provd, "--tpm", "{tpm}", "key", "create", "k", "--type", "ecc-p256"},
					serve,
					{provd, "--socket", "{dir}/provd.sock", "key", "sign", "k", "--digest", hex.EncodeToString(digest[:]), "--out", "{dir}/sig"}, // loads the key: the daemon is warm
				},
				step: [][]string{{provd, "--socket", "{dir}/provd.sock", "key", "sign", "k", "--digest", hex.EncodeToString(digest[:]), "--out", "{dir}/sig"}},
			},
			tools:   signTools(digest[:]),
			minimum: "Sign in a kept policy session: PolicyPCR, PolicyAuthValue, Sign: 3",
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
			minimum:   "Create (under a resident SRK), Load, Sign, Flush: 4",
			runsTimes: 3,
			less:      tpm2.TPMCCCreate,
		},
		{
			name: "seal 32 B to PCRs 7 and 16",
			provd: side{
				setup: [][]string{provision, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"}},
				step:  [][]string{{provd, "--tpm", "{tpm}", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"}},
			},
			tools:   sealTools,
			minimum: "CreatePrimary (or a resident parent), PCR_Read, Create, Flush: 3 under a resident SRK",
		},
		{
			name: "unseal it",
			provd: side{
				setup: [][]string{provision, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"},
					{provd, "--tpm", "{tpm}", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"}},
				step: [][]string{{provd, "--tpm", "{tpm}", "unseal", "--in", "{dir}/sealed", "--out", "{dir}/out"}},
			},
			tools:   unsealTools,
			minimum: "Load, StartAuthSession, PolicyPCR, Unseal, Flush: 5 under a resident SRK",
		},
		{
			name: "seal 32 B to PCRs 7 and 16, as on a device: the `provd seal` process through the running daemon",
			provd: side{
				setup: [][]string{provision, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"}, serve,
					{provd, "--socket", "{dir}/provd.sock", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"}}, // the daemon is warm
				step: [][]string{{provd, "--socket", "{dir}/provd.sock", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"}},
			},
			tools:   sealTools,
			minimum: "PolicyPCR, PolicyAuthValue (the PK's policy), Create: 3 under a resident PK; provd also records it in the audit trail",
		},
		{
			name: "unseal it, as on a device: the `provd unseal` process through the running daemon",
			provd: side{
				setup: [][]string{provision, {"sh", "-c", "head -c 32 /dev/urandom > {dir}/secret"}, serve,
					{provd, "--socket", "{dir}/provd.sock", "seal", "--pcrs", "7,16", "--allow-resettable", "--in", "{dir}/secret", "--out", "{dir}/sealed"},
					{provd, "--socket", "{dir}/provd.sock", "unseal", "--in", "{dir}/sealed", "--out", "{dir}/out"}}, // the daemon is warm
				step: [][]string{{provd, "--socket", "{dir}/provd.sock", "unseal", "--in", "{dir}/sealed", "--out", "{dir}/out"}},
			},
			tools:   unsealTools,
			minimum: "Load, StartAuthSession, PolicyPCR, Unseal, Flush: 5 under a resident SRK; under provd's PK, + the PK's policy (2)",
		},
		{
			// A script's loop: provd's CLI through the daemon's socket (the
			// daemon keeps the key and its session), tpm2-tools on a
			// persistent handle; each derives its key first (provd: an
			// officer-approved recipe; tpm2-tools: a primary key, which the
			// owner seed and the template determine); each drops it after,
			// untimed.
			name: fmt.Sprintf("derive an ECC P-256 key and sign %[1]d digests: provd through its daemon (%[1]d `key sign` processes), tpm2-tools on a persistent handle (%[1]d `tpm2_sign`)", sz.signs),
			provd: side{
				setup: [][]string{
					{"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "{dir}/officer.pem"},
					{"openssl", "pkey", "-in", "{dir}/officer.pem", "-pubout", "-out", "{dir}/officer.pub.pem"},
					append(provision, "--officer-key", "{dir}/officer.pub.pem"),
					{"sh", "-c", provd + " key approve --officer {dir}/officer.pem --pk-policy $(" + provd + " --tpm {tpm} status -o json | grep -o '\"policy_digest\": *\"[0-9a-f]*\"' | head -1 | grep -o '[0-9a-f]\\{64\\}') --type ecc-p256 --label bench --context sign100 --out {dir}/k.approval.json"},
					serve,
				},
				step: [][]string{
					{provd, "--socket", "{dir}/provd.sock", "key", "derive", "k", "--label", "bench", "--context", "sign100", "--type", "ecc-p256", "--approval", "{dir}/k.approval.json"},
					{"sh", "-c", "for i in $(seq " + strconv.Itoa(sz.signs) + "); do " + provd + " --socket {dir}/provd.sock key sign k --digest " + hex.EncodeToString(digest[:]) + " --out {dir}/sig || exit 1; done"},
				},
				after: [][]string{{provd, "--socket", "{dir}/provd.sock", "key", "delete", "k"}},
			},
			tools: side{
				setup: [][]string{{"tpm2_startup", "-c"}},
				files: map[string][]byte{"digest": digest[:]},
				step: [][]string{
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:ecdsa-sha256", "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign|noda", "-c", "{dir}/k.ctx"},
					{"tpm2_evictcontrol", "-C", "o", "-c", "{dir}/k.ctx", "0x81000010"},
					{"tpm2_flushcontext", "-t"},
					{"sh", "-c", "for i in $(seq " + strconv.Itoa(sz.signs) + "); do tpm2_sign -c 0x81000010 -g sha256 -d -o {dir}/sig {dir}/digest || exit 1; done"},
				},
				after: [][]string{{"tpm2_evictcontrol", "-C", "o", "-c", "0x81000010"}},
			},
			minimum: fmt.Sprintf("CreateLoaded (or CreatePrimary), %d Sign (password or a kept session): %d", sz.signs, sz.signs+1),
		},
		{
			// provd's quote goes to its fleet endpoint (on this machine,
			// SQLite, TLS), which appraises it against the class's golden
			// values; tpm2-tools quotes with a persistent AK and checks the
			// quote with tpm2_checkquote, in software.
			name: "quote and verify: provd `attest now` (nonce, quote, TLS round trips, the endpoint's appraisal), tpm2_quote + tpm2_checkquote",
			provd: side{
				setup: [][]string{
					provision,
					{"sh", "-c", "cat {dir}/ca/swtpm-localca-rootca-cert.pem {dir}/ca/issuercert.pem > {dir}/ek-ca.pem"},
					background("{dir}/fleet.log", "serving", provd, "--state-dir", "{dir}/endpoint", "fleet", "serve", "--listen", "127.0.0.1:0", "--ek-ca", "{dir}/ek-ca.pem"),
					{"sh", "-c", "grep -o 'https://[0-9.:]*' {dir}/fleet.log | head -1 > {dir}/url"},
					{"sh", "-c", provd + " --tpm {tpm} attest enroll --endpoint $(cat {dir}/url) --ca-cert {dir}/endpoint/fleet/tls.crt --class bench"},
					{"sh", "-c", provd + " --tpm {tpm} tpm pcr read --pcrs 0,1,2,3,4,5,6,7 -o json > {dir}/golden.json"},
					{"sh", "-c", provd + " fleet policy set --class bench --pcr-values {dir}/golden.json --endpoint $(cat {dir}/url) --ca-cert {dir}/endpoint/fleet/tls.crt --token-file {dir}/endpoint/fleet/operator.token"},
				},
				step: [][]string{{provd, "--tpm", "{tpm}", "attest", "now", "--ca-cert", "{dir}/endpoint/fleet/tls.crt"}},
			},
			tools: side{
				setup: [][]string{
					{"tpm2_startup", "-c"},
					{"tpm2_createek", "-c", "{dir}/ek.ctx", "-G", "rsa", "-u", "{dir}/ek.pub"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_createak", "-C", "{dir}/ek.ctx", "-c", "{dir}/ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", "{dir}/ak.pub", "-f", "pem", "-n", "{dir}/ak.name"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_flushcontext", "-s"},
					{"tpm2_evictcontrol", "-C", "o", "-c", "{dir}/ak.ctx", "0x81010002"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_flushcontext", "-s"},
				},
				step: [][]string{{"sh", "-c", "n=$(openssl rand -hex 16) && tpm2_quote -c 0x81010002 -l sha256:0,1,2,3,4,5,6,7 -q $n -g sha256 -m {dir}/q.msg -s {dir}/q.sig -o {dir}/q.pcrs && " +
					"tpm2_checkquote -u {dir}/ak.pub -m {dir}/q.msg -s {dir}/q.sig -f {dir}/q.pcrs -g sha256 -q $n >/dev/null"}},
			},
			minimum: "Quote (a persistent or loaded AK; 8 PCRs fit one quote): 1; verification is software",
		},
		{
			// Each tool has two TPMs, A and B. provd: the ceremony of
			// scripts/demo.sh in setup (B's identity, the officer's
			// challenge, B's proof, the officer's approval of the key to
			// B); the step exports on A and imports on B under a new name.
			// tpm2-tools: a key whose policy is PolicyCommandCode(Duplicate),
			// duplicated with an outer wrapper only (no inner symmetric
			// key) to B's persistent storage key, imported and loaded on B.
			name:    "duplicate a P-256 key from TPM A and import it on TPM B: provd `dup export` + `dup import`, tpm2_duplicate + tpm2_import (both TPMs' commands)",
			twoTPMs: true,
			provd: side{
				files: map[string][]byte{"setup-dup.sh": []byte(provdDupSetup)},
				setup: [][]string{{"sh", "{dir}/setup-dup.sh", provd, "{tpm}", "{tpm2}", "{dir}", "{dir2}"}},
				step: [][]string{
					{provd, "--tpm", "{tpm}", "dup", "export", "mover", "--to", "{dir}/b.peer.json", "--approval", "{dir}/mover.approval.json", "--ek-ca", "{dir}/ek-ca-b.pem", "--out", "{dir}/mover.dup"},
					{provd, "--tpm", "{tpm2}", "--state-dir", "{dir}/state-b", "dup", "import", "moved", "--in", "{dir}/mover.dup"},
				},
				// B holds the key once: it refuses the same key again.
				after: [][]string{{provd, "--tpm", "{tpm2}", "--state-dir", "{dir}/state-b", "key", "delete", "moved"}},
			},
			tools: side{
				files: map[string][]byte{"setup-dup.sh": []byte(toolsDupSetup)},
				setup: [][]string{{"sh", "{dir}/setup-dup.sh", "{dir}", "{port2}"}},
				step: [][]string{
					{"tpm2_load", "-C", "0x81000001", "-u", "{dir}/k.pub", "-r", "{dir}/k.priv", "-c", "{dir}/k.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_loadexternal", "-C", "o", "-u", "{dir}/b-srk.pub", "-c", "{dir}/b-srk.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_startauthsession", "--policy-session", "-S", "{dir}/session.ctx"},
					{"tpm2_policycommandcode", "-S", "{dir}/session.ctx", "TPM2_CC_Duplicate"},
					{"tpm2_duplicate", "-C", "{dir}/b-srk.ctx", "-c", "{dir}/k.ctx", "-G", "null", "-p", "session:{dir}/session.ctx", "-r", "{dir}/dup.priv", "-s", "{dir}/dup.seed"},
					{"tpm2_flushcontext", "{dir}/session.ctx"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_import", "-T", "swtpm:host=127.0.0.1,port={port2}", "-C", "0x81000001", "-u", "{dir}/k.pub", "-i", "{dir}/dup.priv", "-s", "{dir}/dup.seed", "-r", "{dir}/imported.priv"},
					{"tpm2_load", "-T", "swtpm:host=127.0.0.1,port={port2}", "-C", "0x81000001", "-u", "{dir}/k.pub", "-r", "{dir}/imported.priv", "-c", "{dir}/imported.ctx"},
					{"tpm2_flushcontext", "-T", "swtpm:host=127.0.0.1,port={port2}", "-t"},
				},
			},
			minimum: "A: Load (the key), LoadExternal (B's parent), StartAuthSession, PolicyCommandCode, Duplicate, 2 flushes; B: Import, Load: 9 (provd adds the peer's EK check and an inner wrapper only B's EK opens: ActivateCredential and its sessions)",
		},
		{
			// Both re-provision a TPM provisioned once in setup: provd a
			// fresh state directory each run (it replaces the audit
			// anchor the last one defined), tpm2-tools the same objects.
			name: "provision again (a fresh state directory each run, the same TPM; --force, as the anchor is the last run's)",
			provd: side{
				setup: [][]string{provision},
				step:  [][]string{{"sh", "-c", provd + " --tpm {tpm} --state-dir {dir}/s$$ provision --trust-on-first-use --pcrs 7 --force >/dev/null"}},
			},
			tools: side{
				setup: [][]string{
					{"tpm2_startup", "-c"},
					{"tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "{dir}/prim.ctx"},
					{"tpm2_evictcontrol", "-C", "o", "-c", "{dir}/prim.ctx", "0x81000001"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_nvdefine", "0x01707601", "-C", "o", "-s", "32", "-g", "sha256", "-a", toolsAnchorAttrs},
				},
				files: map[string][]byte{"record": digest[:]},
				step: [][]string{
					{"tpm2_pcrread", "-o", "{dir}/pcr.bin", "sha256:7"},
					{"tpm2_createpolicy", "--policy-pcr", "-l", "sha256:7", "-f", "{dir}/pcr.bin", "-L", "{dir}/pol.bin"},
					{"tpm2_flushcontext", "-l"},
					{"tpm2_create", "-C", "0x81000001", "-G", "ecc256", "-L", "{dir}/pol.bin", "-a", "fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt|noda", "-u", "{dir}/pk.pub", "-r", "{dir}/pk.priv"},
					{"tpm2_flushcontext", "-t"},
					{"tpm2_nvundefine", "0x01707601", "-C", "o"},
					{"tpm2_nvdefine", "0x01707601", "-C", "o", "-s", "32", "-g", "sha256", "-a", toolsAnchorAttrs},
					{"tpm2_nvextend", "0x01707601", "-C", "o", "-i", "{dir}/record"},
				},
			},
			minimum: "PCR_Read, Create (the PK under the persistent SRK), NV_UndefineSpace and NV_DefineSpace (the audit anchor), NV_Extend: 5 (on a fresh TPM + CreatePrimary, EvictControl of the SRK)",
		},
		{
			name: fmt.Sprintf("fw verify: a signed manifest of four %d MiB images, against sha256sum -c (no TPM)", sz.imageMiB),
			provd: side{
				setup: [][]string{
					images,
					{"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "{dir}/officer.pem"},
					{"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "{dir}/fw-signer.pem"},
					{"openssl", "pkey", "-in", "{dir}/fw-signer.pem", "-pubout", "-out", "{dir}/fw-signer.pub.pem"},
					{provd, "--tpm", "{tpm}", "fw", "anchor", "set", "--trust-on-first-use", "--pubkey", "{dir}/fw-signer.pub.pem", "--class", "bench", "--officer", "{dir}/officer.pem"},
					{provd, "fw", "sign", "--key", "{dir}/fw-signer.pem", "--images", "{dir}/images", "--version", "1", "--class", "bench", "--out", "{dir}/fw.manifest"},
				},
				step: [][]string{{provd, "--tpm", "{tpm}", "fw", "verify", "--manifest", "{dir}/fw.manifest", "--root", "{dir}/images"}},
			},
			tools: side{
				setup: [][]string{images, {"sh", "-c", "cd {dir}/images && sha256sum * > ../SHA256SUMS"}},
				step:  [][]string{{"sh", "-c", "cd {dir}/images && sha256sum --quiet -c ../SHA256SUMS"}},
			},
			toolsNoTPM: true,
			minimum:    "NV_Read (the anchor: signer and class), NV_Read (the anti-rollback counter), PCR_Extend: 3; the signature and the digests are software, and provd hashes the images while the TPM reads the counter",
		},
	}
}

func run(provd string, runs, hwRuns, daemonRequests int, update string, filter *regexp.Regexp) error {
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
	fmt.Fprintf(&b, "Measured %s by `go run ./test/benchdriver` (`make bench`) on %s, %d cores, %s/%s; swtpm per tool behind test/tpmproxy (two for the duplication row); one-shot processes (each run a new provd or tpm2-tools process), provd's daemon and fleet endpoint started in the setup of the rows that use them. Other work shared the machine: expect noise of some percent.\n\n",
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
		for i, sc := range scenarios(provd, fullSize) {
			if !filter.MatchString(sc.name) {
				continue
			}
			dir := filepath.Join(root, fmt.Sprintf("m%d-s%d", len(b.String())%1000, i))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			runs := m.runs
			if m.model == nil { // the model's fixed key generation time outweighs the draw
				runs *= max(1, sc.runsTimes)
			}
			r, err := runScenario(ctx, dir, sc, m.model, runs)
			if err != nil {
				return err
			}
			if runs != m.runs {
				r.name += fmt.Sprintf(" (medians of %d runs: the key generation's time is a random draw)", runs)
			}
			if sc.less != 0 {
				r.name += fmt.Sprintf("; without the TPM's time in %s (the key generation): provd %.1f ms, tpm2-tools %.1f ms, ratio %.2f", tpmproxy.Name(sc.less), r.provdLessMS, r.toolsLessMS, r.provdLessMS/r.toolsLessMS)
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
		fl, err := runFloor(ctx, root, daemonRequests)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		fmt.Fprintf(os.Stderr, "floor: %d TPM2_GetRandom back to back from one process: at the TPM %.0f µs, gap before %.0f µs, %.0f%% inside the TPM\n",
			fl.commands, float64(fl.atTPM.Nanoseconds())/1e3, float64(fl.gap.Nanoseconds())/1e3, 100*fl.share)
		for _, run := range []struct {
			keys, requests int
			model          *tpmproxy.Model
		}{{1, daemonRequests, nil}, {4, daemonRequests, nil}, {1, min(daemonRequests, 100), &tpmproxy.Hardware}} {
			keys, first := run.keys, run.model == nil && run.keys == 1
			d, err := runDaemon(ctx, dir+strconv.Itoa(keys)+map[bool]string{true: "hw"}[run.model != nil], provd, run.requests, 32, keys, run.model)
			if err != nil {
				return fmt.Errorf("daemon: %w", err)
			}
			if first {
				fmt.Fprintf(&b, "The daemon (`provd serve`, plain swtpm; binary %.1f MB): start to READY=1 %.0f ms (%d TPM commands); RSS idle %.1f MB.\n\n",
					float64(d.binaryBytes)/(1<<20), d.readyMS, d.startupCommands, float64(d.rssIdleKB)/1024)
				b.WriteString("| signs through the daemon | signs/s | TPM commands/request | time inside the TPM | RSS after (anonymous) |\n| --- | --- | --- | --- | --- |\n")
			}
			on := ""
			if d.model != nil {
				on = ", on the hardware model"
			}
			fmt.Fprintf(&b, "| %d from %d clients over %d key(s)%s | %.0f | %.2f | %.0f%% | %.1f MB (%.1f MB) |\n", d.requests, d.clients, d.keys, on, d.signsPerSec, d.cmdsPerRequest, 100*d.tpmShare, float64(d.rssAfterKB)/1024, float64(d.anonAfterKB)/1024)
			fmt.Fprintf(os.Stderr, "daemon, %d keys: %.0f signs/s, %.2f cmds/request, %.0f%% inside the TPM, RSS %d -> %d kB, ready %.0f ms\n  %s\n", keys, d.signsPerSec, d.cmdsPerRequest, 100*d.tpmShare, d.rssIdleKB, d.rssAfterKB, d.readyMS, d.breakdown())
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
