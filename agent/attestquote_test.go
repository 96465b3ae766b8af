package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/test/swtpmtest"
)

// pcrMover extends PCR 23 right after each of the first `extends`
// successful TPM2_Quotes it forwards, as a measurement landing between
// provd's quote and its read of the values would; it counts the quotes and
// the PCR_Reads.
type pcrMover struct {
	next transport.TPM

	mu       sync.Mutex
	extends  int
	quotes   int
	pcrReads int
	err      error
}

func (m *pcrMover) wrap(next transport.TPM) transport.TPM { m.next = next; return m }

func (m *pcrMover) Send(cmd []byte) ([]byte, error) {
	rsp, err := m.next.Send(cmd)
	if err != nil || len(cmd) < 10 || len(rsp) < 10 {
		return rsp, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) {
	case tpm2.TPMCCPCRRead:
		m.pcrReads++
	case tpm2.TPMCCQuote:
		if binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			break
		}
		m.quotes++
		if m.extends > 0 {
			m.extends--
			d := sha256.Sum256([]byte("a measurement between the quote and the read " + strconv.Itoa(m.quotes)))
			_, m.err = tpm2.PCRExtend{
				PCRHandle: tpm2.AuthHandle{Handle: 23, Auth: tpm2.PasswordAuth(nil)},
				Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
			}.Execute(m.next)
		}
	}
	return rsp, err
}

func (m *pcrMover) set(extends int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.extends, m.quotes, m.pcrReads = extends, 0, 0
}

func (m *pcrMover) counts() (quotes, pcrReads int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.quotes, m.pcrReads, m.err
}

// TestAttestQuoteSendsTheQuotedValues: `attest now` sends the PCR values the
// quote vouches for. It reads them once after the quote (one PCR_Read,
// where the update counter read before and after took three) and checks
// them against the quote's digest itself: a PCR extended between the quote
// and the read is quoted again, and a PCR that moves after every quote
// ends in an error rather than in evidence the endpoint would refuse.
func TestAttestQuoteSendsTheQuotedValues(t *testing.T) {
	m := &pcrMover{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(m.wrap))
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	id, err := ag.AttestIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm2.Unmarshal[tpm2.TPMTPublic](id.AKPublic)
	if err != nil {
		t.Fatal(err)
	}
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {7, 16, 23}}}

	for _, tc := range []struct {
		name            string
		extends, quotes int
	}{
		{"nothing moves", 0, 1},
		{"PCR 23 extended after the first quote", 1, 2},
		{"PCR 23 extended after the first two quotes", 2, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.set(tc.extends)
			res, err := ag.AttestQuote(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			quotes, reads, merr := m.counts()
			if merr != nil {
				t.Fatal(merr)
			}
			if quotes != tc.quotes || reads != tc.quotes {
				t.Fatalf("%d quotes and %d PCR_Reads, want %d of each", quotes, reads, tc.quotes)
			}
			q, err := attest.VerifyQuote(*ak, res.Quote, res.Signature, nonce[:], attest.Options{})
			if err != nil {
				t.Fatal(err)
			}
			vals := attest.PCRValues{tpm2.TPMAlgSHA256: {}}
			for k, h := range res.PCRs["sha256"] {
				i, _ := strconv.Atoi(k)
				if vals[tpm2.TPMAlgSHA256][i], err = hex.DecodeString(h); err != nil {
					t.Fatal(err)
				}
			}
			if len(vals[tpm2.TPMAlgSHA256]) != 3 {
				t.Fatalf("values of %d PCRs sent, want 3", len(vals[tpm2.TPMAlgSHA256]))
			}
			if err := q.CheckPCRs(vals); err != nil {
				t.Fatalf("the values sent are not the quoted ones: %v", err)
			}
		})
	}

	t.Run("PCR 23 extended after every quote", func(t *testing.T) {
		m.set(100)
		_, err := ag.AttestQuote(ctx, req)
		if err == nil || !strings.Contains(err.Error(), "kept changing") {
			t.Fatalf("err = %v, want the PCRs kept changing", err)
		}
		if quotes, _, _ := m.counts(); quotes != 3 {
			t.Fatalf("%d quotes, want 3", quotes)
		}
	})

	t.Run("no PCR is the caller's error", func(t *testing.T) {
		m.set(0)
		if _, err := ag.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {}}}); !errors.Is(err, api.ErrBadInput) {
			t.Fatalf("err = %v, want ErrBadInput", err)
		}
		if quotes, _, _ := m.counts(); quotes != 0 {
			t.Fatalf("%d quotes for an empty selection", quotes)
		}
	})
}
