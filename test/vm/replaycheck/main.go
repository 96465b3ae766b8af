// Command replaycheck replays a TCG PC Client event log, such as the
// firmware log a VM of the test bed copied out of
// /sys/kernel/security/tpm0/binary_bios_measurements, with provd's parser
// and replay (package attest), and compares every PCR the log extends with
// the values the guest read from its TPM. It is the host's half of the
// check that `provd fw log --replay` does inside the VM.
//
//	replaycheck -log bios_measurements.bin -pcrs pcrs.txt
//
// pcrs.txt has one "BANK INDEX HEX" line per PCR (sha1, sha256, sha384).
package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

var banks = map[string]tpm2.TPMIAlgHash{"sha1": tpm2.TPMAlgSHA1, "sha256": tpm2.TPMAlgSHA256, "sha384": tpm2.TPMAlgSHA384}

func main() {
	logPath := flag.String("log", "", "the event log (binary_bios_measurements)")
	pcrPath := flag.String("pcrs", "", "the PCR values the TPM reported: BANK INDEX HEX lines")
	flag.Parse()
	if *logPath == "" || *pcrPath == "" {
		fmt.Fprintln(os.Stderr, "usage: replaycheck -log FILE -pcrs FILE")
		os.Exit(2)
	}
	if err := run(*logPath, *pcrPath); err != nil {
		fmt.Fprintln(os.Stderr, "replaycheck:", err)
		os.Exit(1)
	}
}

func run(logPath, pcrPath string) error {
	raw, err := os.ReadFile(logPath)
	if err != nil {
		return err
	}
	tpmPCRs, err := readPCRs(pcrPath)
	if err != nil {
		return err
	}
	l, err := attest.ParseEventLog(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", logPath, err)
	}
	got, err := l.Replay(attest.Options{AllowSHA1: true})
	if err != nil {
		return fmt.Errorf("%s: replay: %w", logPath, err)
	}
	extended := map[int]bool{}
	for _, e := range l.Events {
		if e.Type != attest.EVNoAction {
			extended[e.PCR] = true
		}
	}
	var idx []int
	for i := range extended {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for bank, vals := range tpmPCRs {
		replayed, ok := got[bank]
		if !ok {
			return fmt.Errorf("the TPM has bank %v, the log does not", bank)
		}
		for _, i := range idx {
			if !bytes.Equal(replayed[i], vals[i]) {
				return fmt.Errorf("bank %v PCR %d: the log replays to %x, the TPM holds %x", bank, i, replayed[i], vals[i])
			}
		}
	}
	var names []string
	for _, b := range l.Banks() {
		for n, v := range banks {
			if v == b {
				names = append(names, n)
			}
		}
	}
	fmt.Printf("replaycheck: %s: %d events, banks %v, PCRs %v replay to the TPM's values\n", logPath, len(l.Events), names, idx)
	return nil
}

func readPCRs(path string) (attest.PCRValues, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := attest.PCRValues{}
	s := bufio.NewScanner(f)
	for n := 1; s.Scan(); n++ {
		fields := strings.Fields(s.Text())
		if len(fields) != 3 {
			return nil, fmt.Errorf("%s:%d: want BANK INDEX HEX", path, n)
		}
		bank, ok := banks[fields[0]]
		if !ok {
			return nil, fmt.Errorf("%s:%d: unknown bank %q", path, n, fields[0])
		}
		i, err := strconv.Atoi(fields[1])
		if err != nil || i < 0 || i > 23 {
			return nil, fmt.Errorf("%s:%d: bad PCR index %q", path, n, fields[1])
		}
		v, err := hex.DecodeString(fields[2])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if out[bank] == nil {
			out[bank] = map[int][]byte{}
		}
		out[bank][i] = v
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PCR values", path)
	}
	return out, nil
}
