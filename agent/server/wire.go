package server

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/policy"
)

// The API's request and response bodies (docs/api.md). Byte strings are
// base64 (encoding/json's []byte). The agent's result types travel as they
// are; these are the requests, whose agent types hold Go values (public keys,
// banks) that need a wire form.

// ProvisionRequest is POST /v1/provision.
type ProvisionRequest struct {
	Bank string `json:"bank,omitempty"`
	PCRs []int  `json:"pcrs,omitempty"`
	// PCRValues are golden values in the file form of docs/policy.md.
	PCRValues json.RawMessage `json:"pcr_values,omitempty"`
	// PolicySigner is a PEM public key.
	PolicySigner string `json:"policy_signer,omitempty"`
	Force        bool   `json:"force,omitempty"`
}

// SealRequest is POST /v1/seal.
type SealRequest struct {
	Data         []byte `json:"data"`
	Bank         string `json:"bank,omitempty"`
	PCRs         []int  `json:"pcrs,omitempty"`
	PolicySigner string `json:"policy_signer,omitempty"`
}

// SealResponse carries the sealed blob (docs/formats.md).
type SealResponse struct {
	Blob []byte `json:"blob"`
}

// UnsealRequest is POST /v1/unseal.
type UnsealRequest struct {
	Blob []byte `json:"blob"`
}

// UnsealResponse carries the secret.
type UnsealResponse struct {
	Secret []byte `json:"secret"`
}

// PolicyInstallRequest is POST /v1/policy/install: policy.json's bytes.
type PolicyInstallRequest struct {
	Policy []byte `json:"policy"`
}

// ZeroizeRequest is POST /v1/zeroize.
type ZeroizeRequest struct {
	SRK bool `json:"srk,omitempty"`
}

// ErrorBody is every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what failed, in words and for machines: Kinds are the
// sentinels the error matched (agent.ErrorKinds), ExitCode the CLI's exit
// code for it, Policy the PCRs when a policy was not satisfied.
type ErrorDetail struct {
	Message  string        `json:"message"`
	Kinds    []string      `json:"kinds"`
	ExitCode int           `json:"exit_code"`
	Policy   *PolicyDetail `json:"policy,omitempty"`
}

// PolicyDetail is agent.PolicyError on the wire.
type PolicyDetail struct {
	Differ []int  `json:"pcrs_differ,omitempty"`
	Bank   string `json:"bank,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// EncodeProvision is the wire form of req.
func EncodeProvision(req agent.ProvisionRequest) (ProvisionRequest, error) {
	w := ProvisionRequest{PCRs: req.PCRs, Force: req.Force}
	if req.Bank != 0 {
		w.Bank = req.Bank.String()
	}
	if req.Values != nil {
		b, err := req.Values.MarshalJSON()
		if err != nil {
			return w, err
		}
		w.PCRValues = b
	}
	var err error
	if w.PolicySigner, err = signerPEM(req.Signer); err != nil {
		return w, err
	}
	return w, nil
}

// signerPEM is the wire form of a policy signer ("" for none).
func signerPEM(pub crypto.PublicKey) (string, error) {
	if pub == nil {
		return "", nil
	}
	b, err := policy.MarshalPublicKeyPEM(pub)
	return string(b), err
}

// Agent is the agent's request for w; a malformed field is agent.ErrBadInput.
func (w ProvisionRequest) Agent() (agent.ProvisionRequest, error) {
	req := agent.ProvisionRequest{PCRs: w.PCRs, Force: w.Force}
	var err error
	if req.Bank, err = parseBank(w.Bank); err != nil {
		return req, err
	}
	if len(w.PCRValues) > 0 {
		v, err := policy.ParsePCRValues(w.PCRValues)
		if err != nil {
			return req, fmt.Errorf("%w: pcr_values: %v", agent.ErrBadInput, err)
		}
		req.Values = &v
	}
	if req.Signer, err = parseSigner(w.PolicySigner); err != nil {
		return req, err
	}
	return req, nil
}

// EncodeSeal is the wire form of req.
func EncodeSeal(req agent.SealRequest) (SealRequest, error) {
	w := SealRequest{Data: req.Data, PCRs: req.PCRs}
	if req.Bank != 0 {
		w.Bank = req.Bank.String()
	}
	var err error
	if w.PolicySigner, err = signerPEM(req.Signer); err != nil {
		return w, err
	}
	return w, nil
}

// Agent is the agent's request for w.
func (w SealRequest) Agent() (agent.SealRequest, error) {
	req := agent.SealRequest{Data: w.Data, PCRs: w.PCRs}
	var err error
	if req.Bank, err = parseBank(w.Bank); err != nil {
		return req, err
	}
	if req.Signer, err = parseSigner(w.PolicySigner); err != nil {
		return req, err
	}
	return req, nil
}

func parseBank(s string) (policy.Bank, error) {
	if s == "" {
		return 0, nil
	}
	b, err := policy.ParseBank(s)
	if err != nil {
		return 0, fmt.Errorf("%w: bank: %v", agent.ErrBadInput, err)
	}
	return b, nil
}

func parseSigner(pemText string) (any, error) {
	if pemText == "" {
		return nil, nil
	}
	pub, err := policy.ParsePublicKeyPEM([]byte(pemText))
	if err != nil {
		return nil, fmt.Errorf("%w: policy_signer: %v", agent.ErrBadInput, err)
	}
	return pub, nil
}

// DecodeStrict decodes one JSON value from data into v: unknown fields,
// trailing data and an empty body are agent.ErrBadInput.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", agent.ErrBadInput, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: request body: trailing data after JSON", agent.ErrBadInput)
	}
	return nil
}
