package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
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

// quoteEnv is a provisioned agent with an attestation key, on a swtpm
// behind bus.
type quoteEnv struct {
	env *swtpmtest.Env
	bus *swtpmtest.Bus
	ag  *agent.Agent
	ak  tpm2.TPMTPublic
}

func startQuoteEnv(t *testing.T, opts ...swtpmtest.Option) *quoteEnv {
	t.Helper()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, append(opts, swtpmtest.WithBus(bus))...)
	ag := newAgent(t, env, stateDir(t))
	provision(t, ag, 7)
	id, err := ag.AttestIdentity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm2.Unmarshal[tpm2.TPMTPublic](id.AKPublic)
	if err != nil {
		t.Fatal(err)
	}
	return &quoteEnv{env: env, bus: bus, ag: ag, ak: *ak}
}

// quoted checks res as the endpoint does (a quote by the AK over nonce,
// the values sent hashing to its digest) and returns the SHA-256 values.
func (q *quoteEnv) quoted(t *testing.T, nonce []byte, res api.AttestQuoteResult) map[int][]byte {
	t.Helper()
	quote, err := attest.VerifyQuote(q.ak, res.Quote, res.Signature, nonce, attest.Options{})
	if err != nil {
		t.Fatalf("the quote returned does not verify: %v", err)
	}
	vals := attest.PCRValues{tpm2.TPMAlgSHA256: {}}
	for k, h := range res.PCRs["sha256"] {
		i, _ := strconv.Atoi(k)
		if vals[tpm2.TPMAlgSHA256][i], err = hex.DecodeString(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := quote.CheckPCRs(vals); err != nil {
		t.Fatalf("the values sent are not the quoted ones: %v", err)
	}
	return vals[tpm2.TPMAlgSHA256]
}

func (q *quoteEnv) noLeftovers(t *testing.T) {
	t.Helper()
	q.bus.Set(nil)
	if left, err := q.env.TPM.Leftovers(); err != nil || len(left) > 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
}

// pcrMover moves PCRs as a measurement landing in the middle of provd's
// read of the values and its quote would: PCR 23 after the last PCR_Read of
// each of the first afterRead reads (between the read and the quote), PCR 16
// after the first PCR_Read of each of the first afterBatch reads of PCRs 0-6,
// 16 and 23 (between the read's two PCR_Reads: PCR 16 comes in the first,
// and its move leaves the PCR update counter as it was), and PCR 23 after each of the first
// afterQuote quotes (after the evidence is taken: harmless). It counts
// quotes and PCR_Reads.
type pcrMover struct {
	mu                                sync.Mutex
	afterRead, afterBatch, afterQuote int
	quotes, reads                     int
	err                               error
}

func (m *pcrMover) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	rsp, err := next.Send(cmd)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err, true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	pcr := 0
	switch swtpmtest.CommandCode(cmd) {
	case tpm2.TPMCCQuote:
		m.quotes++
		if m.afterQuote > 0 {
			m.afterQuote, pcr = m.afterQuote-1, 23
		}
	case tpm2.TPMCCPCRRead:
		m.reads++
		// A read of PCRs 0-6, 16 and 23 asks for the first 8 (a 3-byte
		// bitmap of 0x7f, 0x00, ...), then for PCR 23 alone.
		first := bytes.Contains(cmd, []byte{0x03, 0x7f, 0x00})
		switch {
		case first && m.afterBatch > 0:
			m.afterBatch, pcr = m.afterBatch-1, 16
		case !first && m.afterRead > 0:
			m.afterRead, pcr = m.afterRead-1, 23
		}
	}
	if pcr != 0 {
		d := sha256.Sum256([]byte("a measurement in the middle of the read and the quote " + strconv.Itoa(m.quotes+m.reads)))
		_, m.err = tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}.Execute(next)
	}
	return rsp, err, true
}

func (m *pcrMover) counts() (quotes, reads int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.quotes, m.reads, m.err
}

// TestAttestQuoteSendsTheQuotedValues: `attest now` sends the PCR values the
// quote vouches for. It reads them once, in the audit session that loaded
// the AK, before the quote (one PCR_Read per 8 PCRs, where the update
// counter read before and after took two more), and checks them against
// the quote's digest itself: a PCR extended between the read and the
// quote, or between a read's two PCR_Reads, is read and quoted again, and a
// PCR that moves every time ends in an error rather than in evidence the
// endpoint would refuse. PCRs 16 and 23 do not move the update counter:
// with it, such cases sent values the quote does not vouch for.
func TestAttestQuoteSendsTheQuotedValues(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	few := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {7, 16, 23}}}
	many := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 1, 2, 3, 4, 5, 6, 16, 23}}}

	for _, tc := range []struct {
		name          string
		req           api.AttestQuoteRequest
		mover         *pcrMover
		quotes, reads int
	}{
		{"nothing moves", few, &pcrMover{}, 1, 1},
		{"PCR 23 extended after the quote: the evidence is taken", few, &pcrMover{afterQuote: 1}, 1, 1},
		{"PCR 23 extended after the first read", few, &pcrMover{afterRead: 1}, 2, 2},
		{"PCR 23 extended after the first two reads", few, &pcrMover{afterRead: 2}, 3, 3},
		{"nothing moves, 9 PCRs", many, &pcrMover{}, 1, 2},
		{"PCR 16 extended between the first read's two PCR_Reads", many, &pcrMover{afterBatch: 1}, 2, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.mover
			q.bus.Set(m.hook)
			res, err := q.ag.AttestQuote(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			quotes, reads, merr := m.counts()
			if merr != nil {
				t.Fatal(merr)
			}
			if quotes != tc.quotes || reads != tc.reads {
				t.Fatalf("%d quotes and %d PCR_Reads, want %d and %d", quotes, reads, tc.quotes, tc.reads)
			}
			if vals := q.quoted(t, nonce[:], res); len(vals) != len(tc.req.PCRs["sha256"]) {
				t.Fatalf("values of %d PCRs sent, want %d", len(vals), len(tc.req.PCRs["sha256"]))
			}
			q.noLeftovers(t)
		})
	}

	for name, m := range map[string]*pcrMover{
		"PCR 23 extended after every read":  {afterRead: 100},
		"PCR 16 extended inside every read": {afterBatch: 100},
	} {
		t.Run(name, func(t *testing.T) {
			q.bus.Set(m.hook)
			_, err := q.ag.AttestQuote(ctx, many)
			if err == nil || !strings.Contains(err.Error(), "kept changing") || errors.Is(err, api.ErrTampered) {
				t.Fatalf("err = %v, want the PCRs kept changing (and no tampering)", err)
			}
			if quotes, _, _ := m.counts(); quotes != 3 {
				t.Fatalf("%d quotes, want 3", quotes)
			}
			q.noLeftovers(t)
		})
	}
}

// TestAttestQuoteRefusesBadInputBeforeTheTPM: what the device's own check
// of the quote would refuse is the caller's error, refused before any
// command, never reported as the TPM's tampering (found by review: a short
// nonce came back as api.ErrTampered, "the TPM's quote does not verify";
// an empty bank beside another failed after the quote, unclassified).
func TestAttestQuoteRefusesBadInputBeforeTheTPM(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	good := sha256.Sum256([]byte("n"))
	for name, req := range map[string]api.AttestQuoteRequest{
		"no nonce":                     {PCRs: map[string][]int{"sha256": {7}}},
		"a nonce of 15 bytes":          {Nonce: make([]byte, 15), PCRs: map[string][]int{"sha256": {7}}},
		"a nonce of 65 bytes":          {Nonce: make([]byte, 65), PCRs: map[string][]int{"sha256": {7}}},
		"no bank":                      {Nonce: good[:]},
		"an empty bank":                {Nonce: good[:], PCRs: map[string][]int{"sha256": {}}},
		"an empty bank beside another": {Nonce: good[:], PCRs: map[string][]int{"sha256": {7}, "sha384": {}}},
		"PCR 24":                       {Nonce: good[:], PCRs: map[string][]int{"sha256": {24}}},
		"a SHA-1 bank":                 {Nonce: good[:], PCRs: map[string][]int{"sha1": {7}}},
	} {
		t.Run(name, func(t *testing.T) {
			m := &pcrMover{}
			q.bus.Set(m.hook)
			_, err := q.ag.AttestQuote(ctx, req)
			if !errors.Is(err, api.ErrBadInput) {
				t.Fatalf("err = %v, want ErrBadInput", err)
			}
			if quotes, reads, _ := m.counts(); quotes+reads != 0 {
				t.Fatalf("%d quotes and %d reads sent for bad input", quotes, reads)
			}
		})
	}
	for _, n := range []int{attest.MinNonceSize, attest.MaxNonceSize} {
		q.bus.Set(nil)
		res, err := q.ag.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: bytes.Repeat([]byte{7}, n), PCRs: map[string][]int{"sha256": {7}}})
		if err != nil {
			t.Fatalf("a nonce of %d bytes: %v", n, err)
		}
		q.quoted(t, bytes.Repeat([]byte{7}, n), res)
	}
}

// oneFlip is A1 changing one byte of the k-th successful response, at pos.
type oneFlip struct {
	mu   sync.Mutex
	n, k int
	pos  func(rsp []byte) int
	hit  tpm2.TPMCC
}

func (x *oneFlip) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	rsp, err := next.Send(cmd)
	x.mu.Lock()
	defer x.mu.Unlock()
	i := x.n
	x.n++
	if err != nil || i != x.k || len(rsp) <= 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err, true
	}
	rsp = bytes.Clone(rsp)
	rsp[x.pos(rsp)] ^= 0x01
	x.hit = swtpmtest.CommandCode(cmd)
	return rsp, nil, true
}

// TestAttestQuoteTamperedAnswersGiveNothingFalse: A1 changes one byte of
// each answer of `attest now`'s quote in turn (the response HMAC's last
// byte, the middle, the first parameter byte). Whatever AttestQuote returns
// without an error is a quote by the AK over the nonce, with the TPM's own
// values, which hash to its digest: the AK's signature and the salted
// read's response HMAC leave A1 nothing to choose. Nothing is left loaded.
func TestAttestQuoteTamperedAnswersGiveNothingFalse(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	pcrs := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 23} // two PCR_Reads
	truth, err := q.env.TPM.PCRRead(tpm2.TPMAlgSHA256, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	count := &oneFlip{k: -1}
	q.bus.Set(count.hook)
	nonce := sha256.Sum256([]byte("count"))
	if _, err := q.ag.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": pcrs}}); err != nil {
		t.Fatal(err)
	}
	for name, pos := range map[string]func([]byte) int{
		"last byte":  func(rsp []byte) int { return len(rsp) - 1 },
		"middle":     func(rsp []byte) int { return 10 + (len(rsp)-10)/2 },
		"first data": func(rsp []byte) int { return 10 },
	} {
		for k := range count.n {
			x := &oneFlip{k: k, pos: pos}
			q.bus.Set(x.hook)
			nonce := sha256.Sum256([]byte(name + strconv.Itoa(k)))
			res, err := q.ag.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": pcrs}})
			q.bus.Set(nil)
			// Nothing stays loaded, the AK whose load's handle A1
			// renamed included: the sweep after the operation flushes it
			// (it stayed loaded before withAttestKey asked for the sweep).
			left, lerr := q.env.TPM.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, h := range left {
				t.Errorf("%s of answer %d (%v): 0x%08x left in the TPM", name, k, x.hit, uint32(h))
				_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(q.env.TPM)
			}
			if err != nil {
				continue
			}
			vals := q.quoted(t, nonce[:], res)
			for _, i := range pcrs {
				if !bytes.Equal(vals[i], truth[i]) {
					t.Errorf("%s of answer %d (%v): PCR %d sent as %x, the TPM has %x", name, k, x.hit, i, vals[i], truth[i])
				}
			}
		}
	}
}

// TestAttestQuoteSharesOneAuditSession: the AK's load, the PCRs' read and
// the quote share one session (issue 14), the quote authorized in it by
// the AK's authValue (tpm.TPM.Quote): 6 commands, where the quote's own
// one-use session took 7, and a read after the quote a second audit
// session (9). The evidence verifies and nothing is left.
func TestAttestQuoteSharesOneAuditSession(t *testing.T) {
	q := startQuoteEnv(t)
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7, 16, 23}}}
	log := &swtpmtest.CommandLog{}
	q.bus.Set(log.Hook)
	log.Start()
	res, err := q.ag.AttestQuote(context.Background(), req)
	cmds := log.Stop()
	if err != nil {
		t.Fatal(err)
	}
	want := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCPCRRead, tpm2.TPMCCQuote,
		tpm2.TPMCCFlushContext, tpm2.TPMCCFlushContext} // the AK's, the session's
	if !slices.Equal(cmds, want) {
		t.Errorf("AttestQuote sent %v, want %v", cmds, want)
	}
	q.quoted(t, nonce[:], res)
	q.noLeftovers(t)
}
