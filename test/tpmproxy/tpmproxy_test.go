package tpmproxy

import (
	"context"
	"encoding/binary"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// TestProxyCounts: provd (through tpm.Open) and tpm2-tools (through the
// swtpm TCTI, which also speaks on the control channel) reach swtpm
// through the proxy, and every command they send is counted by its code;
// a model holds a response at least as long as it says.
func TestProxyCounts(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	model := &Model{Name: "test", PerCommand: map[tpm2.TPMCC]time.Duration{tpm2.TPMCCGetRandom: 40 * time.Millisecond}}
	p, err := Start(env.Addr, env.CtrlAddr, model)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	tp, err := tpm.Open(context.Background(), tpm.Options{Spec: "swtpm://" + p.Addr, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	opened := p.Total()
	if opened == 0 {
		t.Fatal("opening the TPM crossed no command")
	}
	start := time.Now()
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 40*time.Millisecond {
		t.Fatalf("the model's 40 ms for GetRandom held the answer %v", took)
	}
	if c := p.Counts(); c[tpm2.TPMCCGetRandom] != 1 || p.Total() != opened+1 {
		t.Fatalf("counts %v (total %d, %d at open)", c, p.Total(), opened)
	}
	if p.Held() <= 0 {
		t.Fatal("nothing held")
	}
	tp.Close()

	p.Reset()
	out, err := exec.Command("tpm2_getrandom", "-T", "swtpm:host=127.0.0.1,port="+strconv.Itoa(p.Port), "--hex", "8").CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_getrandom through the proxy: %v\n%s", err, out)
	}
	if c := p.Counts(); c[tpm2.TPMCCGetRandom] != 1 {
		t.Fatalf("tpm2-tools' commands: %v", c)
	}
}

// TestTemplateAlg: key generation is modelled by the template's
// algorithm, read past the handle, the authorization area and inSensitive.
func TestTemplateAlg(t *testing.T) {
	cmd := func(alg tpm2.TPMAlgID, sessions bool) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
		if sessions {
			b = binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
		}
		b = binary.BigEndian.AppendUint32(b, 0) // size, unchecked here
		b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCCreatePrimary))
		b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRHOwner))
		if sessions {
			b = binary.BigEndian.AppendUint32(b, 9) // a password session
			b = append(b, 0x40, 0, 0, 9, 0, 0, 1, 0, 0)
		}
		b = append(b, 0, 4, 0, 0, 0, 0) // inSensitive: empty auth and data
		b = append(b, 0, 10)            // inPublic's size
		b = binary.BigEndian.AppendUint16(b, uint16(alg))
		return append(b, make([]byte, 8)...)
	}
	for _, c := range []struct {
		alg      tpm2.TPMAlgID
		sessions bool
	}{{tpm2.TPMAlgRSA, true}, {tpm2.TPMAlgECC, true}, {tpm2.TPMAlgRSA, false}} {
		if got := templateAlg(cmd(c.alg, c.sessions)); got != c.alg {
			t.Fatalf("%v (sessions %v): read %v", c.alg, c.sessions, got)
		}
	}
	if d := Hardware.delayOf(cmd(tpm2.TPMAlgRSA, true)); d != rsaKeygen {
		t.Fatalf("RSA keygen modelled %v", d)
	}
	if templateAlg([]byte{0x80, 2, 0, 0, 0, 12, 0, 0, 1, 0x31, 0x40, 0}) != 0 {
		t.Fatal("a truncated command read as a template")
	}
}
