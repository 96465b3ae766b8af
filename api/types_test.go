package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/policy"
)

// A request encodes to its wire form and decodes back to the same Go value,
// the way the client sends it and the server reads it.
func TestRequestsRoundTrip(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{7: make([]byte, 32)}}
	for _, req := range []any{
		&ProvisionRequest{Bank: policy.BankSHA384, PCRs: []int{0, 7}, Force: true},
		&ProvisionRequest{Values: &vals, Signer: &key.PublicKey},
		&ProvisionRequest{},
		&SealRequest{Data: []byte("s"), PCRs: []int{7}, Signer: &key.PublicKey},
		&SealRequest{Data: []byte("s"), Bank: policy.BankSHA256},
		&ZeroizeOptions{SRK: true},
		&DeriveRequest{Name: "k", Label: "l", Context: "c", Type: "ecc-p256", Usage: catalog.UsageSign},
	} {
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("%T: %v", req, err)
		}
		got := reflect.New(reflect.TypeOf(req).Elem()).Interface()
		if err := strictjson.Decode(b, got); err != nil {
			t.Fatalf("%T %s: %v", req, b, err)
		}
		if !reflect.DeepEqual(got, req) {
			t.Errorf("%T: %s decoded to %+v, want %+v", req, b, got, req)
		}
	}
}

// The wire form stays what docs/api.md documents (what older clients send).
func TestProvisionWireForm(t *testing.T) {
	b, err := json.Marshal(ProvisionRequest{Bank: policy.BankSHA256, PCRs: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"bank":"sha256","pcrs":[7]}` {
		t.Errorf("wire form %s", b)
	}
}

// Unknown fields, duplicate keys, a SHA-1 bank and a bad signer are refused
// as bad input, inside the custom decoders as at the top.
func TestRequestsStrict(t *testing.T) {
	for _, tc := range []struct {
		body string
		into any
	}{
		{`{"pcrs":[7],"surprise":1}`, &ProvisionRequest{}},
		{`{"pcrs":[7],"pcrs":[0]}`, &ProvisionRequest{}},
		{`{"bank":"sha1"}`, &ProvisionRequest{}},
		{`{"policy_signer":"not a PEM"}`, &ProvisionRequest{}},
		{`{"pcr_values":{"bank":"sha256","pcrs":{"7":"00"}}}`, &ProvisionRequest{}},
		{`{"data":"AA==","extra":true}`, &SealRequest{}},
		{`{"data":"AA==","bank":"md5"}`, &SealRequest{}},
		{`{"data":"AA=="} {}`, &SealRequest{}},
	} {
		err := strictjson.Decode([]byte(tc.body), tc.into)
		if err == nil {
			t.Errorf("%s: accepted", tc.body)
			continue
		}
		// The server wraps any decoding error as bad input; the custom
		// decoders say so themselves for what they check.
		var se *json.SyntaxError
		if !errors.Is(err, ErrBadInput) && !errors.As(err, &se) && tc.body != `{"data":"AA=="} {}` && tc.body != `{"pcrs":[7],"pcrs":[0]}` {
			t.Errorf("%s: %v is not bad input", tc.body, err)
		}
	}
}

func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{`{"blob":"AA=="}`, `{"data":"AA==","bank":"sha256","pcrs":[7]}`, `{"name":"k","digest":"AA==","hash":"sha384"}`,
		`{"bank":"sha384","pcrs":[0,2],"pcr_values":{"bank":"sha256","pcrs":{"7":"00"}},"force":true}`, `{"name":"k","curve":"P-256","peer":"BA=="}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p ProvisionRequest
		if strictjson.Decode(b, &p) == nil {
			if _, err := json.Marshal(p); err != nil {
				t.Fatalf("decoded %q re-encodes with %v", b, err)
			}
		}
		var s SealRequest
		_ = strictjson.Decode(b, &s)
		var e ECDHRequest
		if strictjson.Decode(b, &e) == nil {
			_, _ = ParsePeer(e.Curve, e.Peer)
		}
		var sr SignRequest
		if strictjson.Decode(b, &sr) == nil {
			_, _ = ParseHash(sr.Hash)
		}
	})
}

// FuzzParseTransferFiles: a peer identity or a duplicate from a file never
// panics its parser, and what it accepts is of this format and re-encodes.
func FuzzParseTransferFiles(f *testing.F) {
	f.Add([]byte(`{"format":1,"ek_certificates":["AA=="],"parent":"AA==","parent_name":"00","pk_policy":"00","officer":"00","created_at":"2026-12-04T00:00:00Z"}`))
	f.Add([]byte(`{"format":1,"key":"k","type":"ecc-p256","usage":"sign","public":"AA==","duplicate":"AA==","seed":"AA==","credential_blob":"AA==","credential_secret":"AA==","parent_name":"00","pk_policy":"00","officer":"00","ek_cert_sha256":"00","created_at":"2026-12-04T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParsePeerIdentity(b); err == nil {
			if p.Format != PeerFormat {
				t.Fatalf("accepted format %d", p.Format)
			}
			if _, err := json.Marshal(p); err != nil {
				t.Fatal(err)
			}
		}
		if d, err := ParseDupFile(b); err == nil {
			if d.Format != DupFormat {
				t.Fatalf("accepted format %d", d.Format)
			}
			if _, err := json.Marshal(d); err != nil {
				t.Fatal(err)
			}
		}
		c, cerr := ParsePeerChallenge(b)
		p, perr := ParsePeerProof(b)
		if cerr == nil && perr == nil {
			// Whatever parses, a proof is checked against the
			// commitment, never taken on its word.
			if c.Proven(p, PeerIdentity{ParentName: c.ParentName}) == nil {
				t.Fatal("a proof held for a peer file without the challenge's EK certificate")
			}
		}
	})
}

// TestProvenNeedsTheCommittedAnswer: a proof holds only with the answer
// the verifier's challenge committed to, for the peer file's transfer key
// and one of its EK certificates.
func TestProvenNeedsTheCommittedAnswer(t *testing.T) {
	answer := make([]byte, ChallengeAnswerSize)
	answer[0] = 1
	sum := sha256.Sum256(answer)
	cert := []byte("an EK certificate")
	cs := sha256.Sum256(cert)
	peer := PeerIdentity{ParentName: "000bt", EKCertificates: [][]byte{cert}}
	c := PeerChallenge{Format: ChallengeFormat, ParentName: "000bt", EKCertSHA256: hex.EncodeToString(cs[:]), Commitment: hex.EncodeToString(sum[:])}
	p := PeerProof{Format: ChallengeFormat, ParentName: "000bt", Answer: answer}
	if err := c.Proven(p, peer); err != nil {
		t.Fatalf("control: %v", err)
	}
	other := append([]byte(nil), answer...)
	other[1] = 2
	forged := peer
	forged.ParentName = "000bx"
	noCert := peer
	noCert.EKCertificates = [][]byte{[]byte("another")}
	for name, tc := range map[string]struct {
		c    PeerChallenge
		p    PeerProof
		peer PeerIdentity
	}{
		"another answer":        {c, PeerProof{Format: ChallengeFormat, ParentName: "000bt", Answer: other}, peer},
		"a short answer":        {c, PeerProof{Format: ChallengeFormat, ParentName: "000bt", Answer: answer[:4]}, peer},
		"another transfer key":  {c, p, forged},
		"the proof's own claim": {c, PeerProof{Format: ChallengeFormat, ParentName: "000bx", Answer: answer}, forged},
		"an EK not in the file": {c, p, noCert},
	} {
		if err := tc.c.Proven(tc.p, tc.peer); !errors.Is(err, ErrNotPermitted) && !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
