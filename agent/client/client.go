// Package client is the CLI's way to the daemon: agent.API over HTTP/JSON on
// the daemon's unix socket (docs/api.md). Errors come back as *Error, which
// errors.Is the same sentinels the daemon's error matched (agent.ErrorKinds)
// and carries the exit code the in-process CLI would have used, so a command
// behaves the same whichever way it runs.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/server"
	"github.com/provd/provd/audit"
)

// maxResponse bounds what the client reads: an audit trail or a 1 MiB
// secret in base64 fits many times over.
const maxResponse = 64 << 20

// Client talks to one daemon socket.
type Client struct {
	path string
	hc   *http.Client
	// Timeout bounds the methods that take no context (AuditRecords,
	// AuditVerify). Others end with their context.
	Timeout time.Duration
}

var _ agent.API = (*Client)(nil)

// New returns a client for the daemon listening on the unix socket path.
func New(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:        4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr}, Timeout: 5 * time.Minute}
}

// Answers reports whether something accepts connections on path: the CLI
// then uses the daemon. Under socket activation the socket answers before
// the daemon runs (systemd starts it on the first connection).
func Answers(ctx context.Context, path string) bool {
	if path == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Error is an error the daemon reported.
type Error struct {
	Message string
	Kinds   []string
	Code    int
	// Status is the HTTP status.
	Status int
	policy *agent.PolicyError
}

func (e *Error) Error() string { return e.Message }

// ExitCode is the exit code the daemon computed for the error: the CLI
// exits with it, as it would have in-process.
func (e *Error) ExitCode() int { return e.Code }

// Unwrap yields the sentinels of Kinds and, for an unmet policy, an
// *agent.PolicyError with the PCRs that differ.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.policy != nil {
		errs = append(errs, e.policy)
	}
	for _, k := range e.Kinds {
		if s := agent.KindError(k); s != nil {
			errs = append(errs, s)
		}
	}
	return errs
}

func decodeError(status int, body []byte) error {
	var eb server.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Message == "" {
		return &Error{Message: fmt.Sprintf("daemon answered HTTP %d: %.200s", status, strings.TrimSpace(string(body))), Code: 1, Status: status}
	}
	d := eb.Error
	e := &Error{Message: d.Message, Kinds: d.Kinds, Code: d.ExitCode, Status: status}
	if d.Policy != nil {
		e.policy = &agent.PolicyError{Differ: d.Policy.Differ, Bank: d.Policy.Bank, Reason: d.Policy.Reason, Err: errors.New(d.Message)}
	}
	return e
}

// call sends req (nil: none) and decodes the answer into res.
func (c *Client) call(ctx context.Context, method, path string, req, res any) error {
	var body io.Reader
	var reqBytes []byte
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		reqBytes = b
		defer clear(reqBytes) // may hold a secret
		body = bytes.NewReader(b)
	}
	hr, err := http.NewRequestWithContext(ctx, method, "http://provd"+path, body)
	if err != nil {
		return err
	}
	if req != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	rsp, err := c.hc.Do(hr)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("provd daemon at %s: %w", c.path, err)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(rsp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("provd daemon at %s: reading the answer: %w", c.path, err)
	}
	defer clear(b)
	if rsp.StatusCode != http.StatusOK {
		return decodeError(rsp.StatusCode, b)
	}
	if err := json.Unmarshal(b, res); err != nil {
		return fmt.Errorf("provd daemon at %s: decoding the answer: %w", c.path, err)
	}
	return nil
}

func (c *Client) Provision(ctx context.Context, req agent.ProvisionRequest) (agent.ProvisionResult, error) {
	var res agent.ProvisionResult
	w, err := server.EncodeProvision(req)
	if err != nil {
		return res, err
	}
	return res, c.call(ctx, "POST", "/v1/provision", w, &res)
}

func (c *Client) InstallPolicy(ctx context.Context, signedPolicy []byte) (agent.PolicyInstallResult, error) {
	var res agent.PolicyInstallResult
	return res, c.call(ctx, "POST", "/v1/policy/install", server.PolicyInstallRequest{Policy: signedPolicy}, &res)
}

func (c *Client) ShowPolicy(ctx context.Context) (agent.PolicyState, error) {
	var res agent.PolicyState
	return res, c.call(ctx, "GET", "/v1/policy", nil, &res)
}

func (c *Client) Seal(ctx context.Context, req agent.SealRequest) ([]byte, error) {
	w, err := server.EncodeSeal(req)
	if err != nil {
		return nil, err
	}
	var res server.SealResponse
	if err := c.call(ctx, "POST", "/v1/seal", w, &res); err != nil {
		return nil, err
	}
	return res.Blob, nil
}

// Unseal returns the secret; the caller clears it.
func (c *Client) Unseal(ctx context.Context, blob []byte) ([]byte, error) {
	var res server.UnsealResponse
	if err := c.call(ctx, "POST", "/v1/unseal", server.UnsealRequest{Blob: blob}, &res); err != nil {
		return nil, err
	}
	return res.Secret, nil
}

func (c *Client) Status(ctx context.Context) (agent.Status, error) {
	var res agent.Status
	return res, c.call(ctx, "GET", "/v1/status", nil, &res)
}

func (c *Client) TPMInfo(ctx context.Context) (agent.TPMInfo, error) {
	var res agent.TPMInfo
	return res, c.call(ctx, "GET", "/v1/tpm/info", nil, &res)
}

func (c *Client) AuditRecords() ([]audit.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	var res []audit.Record
	return res, c.call(ctx, "GET", "/v1/audit", nil, &res)
}

func (c *Client) AuditVerify() (audit.Report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	var res audit.Report
	return res, c.call(ctx, "GET", "/v1/audit/verify", nil, &res)
}

func (c *Client) Zeroize(ctx context.Context, opts agent.ZeroizeOptions) (agent.ZeroizeResult, error) {
	var res agent.ZeroizeResult
	return res, c.call(ctx, "POST", "/v1/zeroize", server.ZeroizeRequest{SRK: opts.SRK}, &res)
}

func (c *Client) AuditRepair(anchorLast bool) (audit.Report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	var res audit.Report
	return res, c.call(ctx, "POST", "/v1/audit/repair", server.AuditRepairRequest{AnchorLast: anchorLast}, &res)
}

func (c *Client) DeriveKey(ctx context.Context, req agent.DeriveRequest) (agent.KeyInfo, error) {
	var res agent.KeyInfo
	w := server.DeriveRequest{Name: req.Name, Label: req.Label, Context: req.Context, Type: req.Type, Usage: req.Usage}
	return res, c.call(ctx, "POST", "/v1/keys/derive", w, &res)
}

func (c *Client) CreateKey(ctx context.Context, req agent.CreateRequest) (agent.KeyInfo, error) {
	var res agent.KeyInfo
	w := server.CreateRequest{Name: req.Name, Type: req.Type, Usage: req.Usage, Extractable: req.Extractable}
	return res, c.call(ctx, "POST", "/v1/keys/create", w, &res)
}

func (c *Client) DeleteKey(ctx context.Context, name string) error {
	var res server.Empty
	return c.call(ctx, "POST", "/v1/keys/delete", server.KeyName{Name: name}, &res)
}

func (c *Client) ListKeys(ctx context.Context) ([]agent.KeyInfo, error) {
	var res []agent.KeyInfo
	return res, c.call(ctx, "GET", "/v1/keys", nil, &res)
}

func (c *Client) KeyPublic(ctx context.Context, name string) (crypto.PublicKey, agent.KeyInfo, error) {
	var res server.KeyPublicResponse
	if err := c.call(ctx, "POST", "/v1/keys/public", server.KeyName{Name: name}, &res); err != nil {
		return nil, agent.KeyInfo{}, err
	}
	pub, err := x509.ParsePKIXPublicKey(res.Public)
	if err != nil {
		return nil, res.Key, fmt.Errorf("provd daemon at %s: public key: %w", c.path, err)
	}
	return pub, res.Key, nil
}

// data runs one of the endpoints that answer with bytes.
func (c *Client) data(ctx context.Context, path string, req any) ([]byte, error) {
	var res server.DataResponse
	if err := c.call(ctx, "POST", path, req, &res); err != nil {
		return nil, err
	}
	return res.Data, nil
}

func (c *Client) Sign(ctx context.Context, name string, digest []byte, opts agent.SignOptions) ([]byte, error) {
	return c.data(ctx, "/v1/keys/sign", server.SignRequest{Name: name, Digest: digest, Scheme: opts.Scheme, Hash: server.HashName(opts.Hash)})
}

func (c *Client) HMAC(ctx context.Context, name string, data []byte) ([]byte, error) {
	return c.data(ctx, "/v1/keys/hmac", server.DataRequest{Name: name, Data: data})
}

// ECDH returns the shared secret; the caller clears it.
func (c *Client) ECDH(ctx context.Context, name string, peer *ecdh.PublicKey) ([]byte, error) {
	if peer == nil {
		return nil, fmt.Errorf("%w: no peer public key", agent.ErrBadInput)
	}
	return c.data(ctx, "/v1/keys/ecdh", server.ECDHRequest{Name: name, Curve: server.CurveName(peer.Curve()), Peer: peer.Bytes()})
}

// Decrypt returns the plaintext; the caller clears it.
func (c *Client) Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error) {
	return c.data(ctx, "/v1/keys/decrypt", server.DecryptRequest{Name: name, Ciphertext: ciphertext, Hash: server.HashName(h)})
}

func (c *Client) EncryptData(ctx context.Context, name string, plain []byte) ([]byte, error) {
	return c.data(ctx, "/v1/keys/encrypt-data", server.DataRequest{Name: name, Data: plain})
}

// DecryptData returns the plaintext; the caller clears it.
func (c *Client) DecryptData(ctx context.Context, name string, envelope []byte) ([]byte, error) {
	return c.data(ctx, "/v1/keys/decrypt-data", server.DataRequest{Name: name, Data: envelope})
}

// ExportKeyBlob returns a created key's TSS2 PRIVATE KEY file (PEM).
func (c *Client) ExportKeyBlob(ctx context.Context, name string) ([]byte, error) {
	return c.data(ctx, "/v1/keys/export-blob", server.KeyName{Name: name})
}

func (c *Client) ImportKeyBlob(ctx context.Context, name string, pemData []byte) (agent.KeyInfo, error) {
	var res agent.KeyInfo
	return res, c.call(ctx, "POST", "/v1/keys/import-blob", server.ImportBlobRequest{Name: name, PEM: pemData}, &res)
}
