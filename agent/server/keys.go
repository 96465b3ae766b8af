package server

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/x509"
	"fmt"
	"net/http"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/audit"
)

// Key requests and responses (docs/api.md). Key names travel in the body,
// never in the path, so every endpoint decodes one strict JSON object.

// KeyName names a key: POST /v1/keys/public, /v1/keys/delete.
type KeyName struct {
	Name string `json:"name"`
}

// DeriveRequest is POST /v1/keys/derive.
type DeriveRequest struct {
	Name    string `json:"name"`
	Label   string `json:"label"`
	Context string `json:"context,omitempty"`
	Type    string `json:"type,omitempty"`
	Usage   string `json:"usage,omitempty"`
}

// CreateRequest is POST /v1/keys/create.
type CreateRequest struct {
	Name        string `json:"name"`
	Type        string `json:"type,omitempty"`
	Usage       string `json:"usage,omitempty"`
	Extractable bool   `json:"extractable,omitempty"`
}

// ImportBlobRequest is POST /v1/keys/import-blob: a TSS2 PRIVATE KEY file.
type ImportBlobRequest struct {
	Name string `json:"name"`
	PEM  []byte `json:"pem"`
}

// KeyPublicResponse: the key's description and its public key, PKIX DER.
type KeyPublicResponse struct {
	Key    agent.KeyInfo `json:"key"`
	Public []byte        `json:"public_key_der"`
}

// SignRequest is POST /v1/keys/sign: digest is the hash of the message.
type SignRequest struct {
	Name   string `json:"name"`
	Digest []byte `json:"digest"`
	Scheme string `json:"scheme,omitempty"`
	Hash   string `json:"hash,omitempty"` // sha256, sha384; "" the key's default
}

// DataRequest is POST /v1/keys/hmac, /v1/keys/encrypt-data, /v1/keys/decrypt-data.
type DataRequest struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
}

// ECDHRequest is POST /v1/keys/ecdh: the peer's public point, uncompressed.
type ECDHRequest struct {
	Name  string `json:"name"`
	Curve string `json:"curve"` // P-256, P-384
	Peer  []byte `json:"peer"`
}

// DecryptRequest is POST /v1/keys/decrypt (RSA-OAEP, empty label).
type DecryptRequest struct {
	Name       string `json:"name"`
	Ciphertext []byte `json:"ciphertext"`
	Hash       string `json:"hash,omitempty"`
}

// DataResponse carries the bytes an operation produced (signature, MAC,
// shared secret, plaintext, envelope).
type DataResponse struct {
	Data []byte `json:"data"`
}

// AuditRepairRequest is POST /v1/audit/repair.
type AuditRepairRequest struct {
	AnchorLast bool `json:"anchor_last,omitempty"`
}

// Empty is the answer of an operation without a result.
type Empty struct{}

// keyName is a request that names a key, for the log's key_name field.
type keyName interface{ keyName() string }

func (w KeyName) keyName() string           { return w.Name }
func (w DeriveRequest) keyName() string     { return w.Name }
func (w CreateRequest) keyName() string     { return w.Name }
func (w SignRequest) keyName() string       { return w.Name }
func (w DataRequest) keyName() string       { return w.Name }
func (w ECDHRequest) keyName() string       { return w.Name }
func (w DecryptRequest) keyName() string    { return w.Name }
func (w ImportBlobRequest) keyName() string { return w.Name }

func (w DataRequest) inputLen() int { return len(w.Data) }
func (w SignRequest) inputLen() int { return len(w.Digest) }

func (w *DataRequest) wipe()  { clear(w.Data) }
func (w *DataResponse) wipe() { clear(w.Data) }

// HashName is the wire name of an approved hash ("" for 0).
func HashName(h crypto.Hash) string {
	switch h {
	case 0:
		return ""
	case crypto.SHA256:
		return "sha256"
	case crypto.SHA384:
		return "sha384"
	case crypto.SHA512:
		return "sha512"
	}
	return fmt.Sprintf("hash-%d", int(h))
}

// ParseHash reads HashName's names; the agent decides what is approved.
func ParseHash(s string) (crypto.Hash, error) {
	switch s {
	case "":
		return 0, nil
	case "sha256":
		return crypto.SHA256, nil
	case "sha384":
		return crypto.SHA384, nil
	case "sha512":
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("%w: hash %q: want sha256 or sha384", agent.ErrBadInput, s)
}

// CurveName is the wire name of an ECDH curve.
func CurveName(c ecdh.Curve) string {
	switch c {
	case ecdh.P256():
		return "P-256"
	case ecdh.P384():
		return "P-384"
	case ecdh.P521():
		return "P-521"
	}
	return fmt.Sprint(c)
}

// ParsePeer rebuilds an ECDH peer key.
func ParsePeer(curve string, point []byte) (*ecdh.PublicKey, error) {
	var c ecdh.Curve
	switch curve {
	case "P-256":
		c = ecdh.P256()
	case "P-384":
		c = ecdh.P384()
	case "P-521":
		c = ecdh.P521()
	default:
		return nil, fmt.Errorf("%w: curve %q: want P-256 or P-384", agent.ErrBadInput, curve)
	}
	pub, err := c.NewPublicKey(point)
	if err != nil {
		return nil, fmt.Errorf("%w: peer public key: %v", agent.ErrBadInput, err)
	}
	return pub, nil
}

// keyHandlers are the key and audit-repair endpoints' handlers by operation.
func (s *Server) keyHandler(ep endpoint) http.HandlerFunc {
	ag := s.ag
	switch ep.Op {
	case "key-derive":
		return handle(s, ep, func(ctx context.Context, w DeriveRequest) (agent.KeyInfo, error) {
			return ag.DeriveKey(ctx, agent.DeriveRequest{Name: w.Name, Label: w.Label, Context: w.Context, Type: w.Type, Usage: w.Usage})
		})
	case "key-create":
		return handle(s, ep, func(ctx context.Context, w CreateRequest) (agent.KeyInfo, error) {
			return ag.CreateKey(ctx, agent.CreateRequest{Name: w.Name, Type: w.Type, Usage: w.Usage, Extractable: w.Extractable})
		})
	case "key-delete":
		return handle(s, ep, func(ctx context.Context, w KeyName) (Empty, error) {
			return Empty{}, ag.DeleteKey(ctx, w.Name)
		})
	case "key-export-blob":
		return handle(s, ep, func(ctx context.Context, w KeyName) (DataResponse, error) {
			p, err := ag.ExportKeyBlob(ctx, w.Name)
			return DataResponse{Data: p}, err
		})
	case "key-import-blob":
		return handle(s, ep, func(ctx context.Context, w ImportBlobRequest) (agent.KeyInfo, error) {
			return ag.ImportKeyBlob(ctx, w.Name, w.PEM)
		})
	case "key-list":
		return handle(s, ep, func(ctx context.Context, _ empty) ([]agent.KeyInfo, error) {
			keys, err := ag.ListKeys(ctx)
			if keys == nil {
				keys = []agent.KeyInfo{}
			}
			return keys, err
		})
	case "key-public":
		return handle(s, ep, func(ctx context.Context, w KeyName) (KeyPublicResponse, error) {
			pub, info, err := ag.KeyPublic(ctx, w.Name)
			if err != nil {
				return KeyPublicResponse{}, err
			}
			der, err := x509.MarshalPKIXPublicKey(pub)
			return KeyPublicResponse{Key: info, Public: der}, err
		})
	case "key-sign":
		return handle(s, ep, func(ctx context.Context, w SignRequest) (DataResponse, error) {
			h, err := ParseHash(w.Hash)
			if err != nil {
				return DataResponse{}, err
			}
			sig, err := ag.Sign(ctx, w.Name, w.Digest, agent.SignOptions{Scheme: w.Scheme, Hash: h})
			return DataResponse{Data: sig}, err
		})
	case "key-hmac":
		return handle(s, ep, func(ctx context.Context, w DataRequest) (DataResponse, error) {
			mac, err := ag.HMAC(ctx, w.Name, w.Data)
			return DataResponse{Data: mac}, err
		})
	case "key-ecdh":
		return handle(s, ep, func(ctx context.Context, w ECDHRequest) (DataResponse, error) {
			peer, err := ParsePeer(w.Curve, w.Peer)
			if err != nil {
				return DataResponse{}, err
			}
			z, err := ag.ECDH(ctx, w.Name, peer)
			return DataResponse{Data: z}, err
		})
	case "key-decrypt":
		return handle(s, ep, func(ctx context.Context, w DecryptRequest) (DataResponse, error) {
			h, err := ParseHash(w.Hash)
			if err != nil {
				return DataResponse{}, err
			}
			plain, err := ag.Decrypt(ctx, w.Name, w.Ciphertext, h)
			return DataResponse{Data: plain}, err
		})
	case "key-encrypt-data":
		return handle(s, ep, func(ctx context.Context, w DataRequest) (DataResponse, error) {
			env, err := ag.EncryptData(ctx, w.Name, w.Data)
			return DataResponse{Data: env}, err
		})
	case "key-decrypt-data":
		return handle(s, ep, func(ctx context.Context, w DataRequest) (DataResponse, error) {
			plain, err := ag.DecryptData(ctx, w.Name, w.Data)
			return DataResponse{Data: plain}, err
		})
	case "audit-repair":
		return handle(s, ep, func(_ context.Context, w AuditRepairRequest) (audit.Report, error) {
			return ag.AuditRepair(w.AnchorLast)
		})
	}
	return nil
}
