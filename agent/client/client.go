// Package client is the way to the daemon: api.Service over HTTP/JSON on the
// daemon's unix socket (docs/api.md). It imports the contract (package api)
// and nothing of the daemon, so a program that talks to provd links neither
// the server nor its configuration. Errors come back as *api.Error, which
// errors.Is the same sentinels the daemon's error matched and carries the
// exit code the in-process CLI would have used, so a command behaves the same
// whichever way it runs.
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

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/internal/trustedpath"
)

// maxResponse bounds what the client reads: an audit trail or a 1 MiB
// secret in base64 fits many times over.
const maxResponse = 64 << 20

// Client talks to one daemon socket.
type Client struct {
	path string
	hc   *http.Client
	// Timeout bounds a call whose context has no deadline, so that a
	// wedged daemon cannot hold a caller forever (DefaultTimeout).
	Timeout time.Duration
}

// DefaultTimeout is above the longest a healthy daemon takes: its queue
// wait (30 s by default, configurable) and its bound on one operation
// (10 min).
const DefaultTimeout = 15 * time.Minute

var _ api.Service = (*Client)(nil)

// New returns a client for the daemon listening on the unix socket path.
func New(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialDaemon(ctx, path)
		},
		MaxIdleConns:        4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr}, Timeout: DefaultTimeout}
}

// Answers reports whether a daemon provd may use accepts connections on
// path (Check): the CLI then uses the daemon. Under socket activation the
// socket answers before the daemon runs (systemd starts it on the first
// connection).
func Answers(ctx context.Context, path string) bool { return Check(ctx, path) == nil }

// Check is nil when a daemon provd may use answers on path; an error
// wrapping api.ErrNotPermitted when something is there that dialDaemon
// refuses (another user's socket, directory or listener: the CLI says so
// rather than work in-process beside it, review 63); another error when
// nothing answers.
func Check(ctx context.Context, path string) error {
	if path == "" {
		return errors.New("no daemon socket named")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := dialDaemon(ctx, path)
	if err != nil {
		return err
	}
	return c.Close()
}

// dialDaemon connects to the daemon's socket at path and refuses one that
// another user than root and the caller could have put there or serves
// (found by review 62: the client sent a seal request's secret to another
// user's listener at the path, and Answers took it for the daemon): the
// socket, and every directory and link on the way to it, must be root's
// or the caller's, none of the directories writable by another unless
// sticky (internal/trustedpath, the daemon's own rule for where it
// listens: review 63, a listener root made and handed to another user
// passes the peer check), and the socket's listener root or the caller
// (SO_PEERCRED). provd's daemon runs as root; a daemon a user runs for
// themselves is theirs.
//
// An abstract address ("@name") is refused: any user may bind any name,
// and who serves one that root bound is not the kernel's to say
// (SO_PEERCRED names whoever called listen; review 65: root listened and
// handed it to another user, who took the secret). provd's daemon listens
// at a path. A path that is missing or that the caller may not reach is
// nothing answering, not a refusal (review 64: with no daemon, the CLI
// refused every command).
func dialDaemon(ctx context.Context, path string) (net.Conn, error) {
	if strings.HasPrefix(path, "@") {
		return nil, fmt.Errorf("%w: the daemon's socket %s is an abstract address, which any user may bind: provd's daemon listens at a path", api.ErrNotPermitted, path)
	}
	resolved, err := trustedpath.Walk(path)
	if err != nil {
		return nil, refusedSocket(path, err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", resolved)
	if err != nil {
		return nil, err
	}
	if err := trustedpath.CheckPeer(c); err != nil {
		c.Close()
		return nil, refusedSocket(path, err)
	}
	return c, nil
}

// refusedSocket is err about the daemon's socket at path: not_permitted
// when the socket is another user's to change or serve, as it is
// otherwise.
func refusedSocket(path string, err error) error {
	if errors.Is(err, trustedpath.ErrUntrusted) {
		return fmt.Errorf("%w: the daemon's socket %s: %w", api.ErrNotPermitted, path, err)
	}
	return fmt.Errorf("the daemon's socket %s: %w", path, err)
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// call sends req (nil: none) and decodes the answer into res.
func (c *Client) call(ctx context.Context, r api.Route, req, res any) error {
	if _, ok := ctx.Deadline(); !ok && c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
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
	hr, err := http.NewRequestWithContext(ctx, r.Method, "http://provd"+r.Path, body)
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
		return api.DecodeError(rsp.StatusCode, b)
	}
	if err := json.Unmarshal(b, res); err != nil {
		return fmt.Errorf("provd daemon at %s: decoding the answer: %w", c.path, err)
	}
	return nil
}

func (c *Client) Provision(ctx context.Context, req api.ProvisionRequest) (api.ProvisionResult, error) {
	var res api.ProvisionResult
	return res, c.call(ctx, api.RouteProvision, req, &res)
}

func (c *Client) InstallPolicy(ctx context.Context, signedPolicy []byte) (api.PolicyInstallResult, error) {
	var res api.PolicyInstallResult
	return res, c.call(ctx, api.RoutePolicyInstall, api.PolicyInstallRequest{Policy: signedPolicy}, &res)
}

func (c *Client) ShowPolicy(ctx context.Context) (api.PolicyState, error) {
	var res api.PolicyState
	return res, c.call(ctx, api.RoutePolicyShow, nil, &res)
}

func (c *Client) Seal(ctx context.Context, req api.SealRequest) ([]byte, error) {
	var res api.SealResponse
	if err := c.call(ctx, api.RouteSeal, req, &res); err != nil {
		return nil, err
	}
	return res.Blob, nil
}

// Unseal returns the secret; the caller clears it.
func (c *Client) Unseal(ctx context.Context, blob []byte) ([]byte, error) {
	var res api.UnsealResponse
	if err := c.call(ctx, api.RouteUnseal, api.UnsealRequest{Blob: blob}, &res); err != nil {
		return nil, err
	}
	return res.Secret, nil
}

func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var res api.Status
	return res, c.call(ctx, api.RouteStatus, nil, &res)
}

func (c *Client) TPMInfo(ctx context.Context) (api.TPMInfo, error) {
	var res api.TPMInfo
	return res, c.call(ctx, api.RouteTPMInfo, nil, &res)
}

func (c *Client) TPMIdentity(ctx context.Context, req api.IdentityRequest) (api.Identity, error) {
	var res api.Identity
	return res, c.call(ctx, api.RouteTPMIdentity, req, &res)
}

func (c *Client) AuditRecords(ctx context.Context) ([]audit.Record, error) {
	var res []audit.Record
	return res, c.call(ctx, api.RouteAuditShow, nil, &res)
}

func (c *Client) AuditVerify(ctx context.Context) (audit.Report, error) {
	var res audit.Report
	return res, c.call(ctx, api.RouteAuditVerify, nil, &res)
}

func (c *Client) Zeroize(ctx context.Context, opts api.ZeroizeOptions) (api.ZeroizeResult, error) {
	var res api.ZeroizeResult
	return res, c.call(ctx, api.RouteZeroize, opts, &res)
}

func (c *Client) AuditRepair(ctx context.Context, anchorLast bool) (audit.Report, error) {
	var res audit.Report
	return res, c.call(ctx, api.RouteAuditRepair, api.AuditRepairRequest{AnchorLast: anchorLast}, &res)
}

func (c *Client) AuditReanchor(ctx context.Context) (api.AuditReanchorResult, error) {
	var res api.AuditReanchorResult
	return res, c.call(ctx, api.RouteAuditReanchor, nil, &res)
}

func (c *Client) DeriveKey(ctx context.Context, req api.DeriveRequest) (api.KeyInfo, error) {
	var res api.KeyInfo
	return res, c.call(ctx, api.RouteKeyDerive, req, &res)
}

func (c *Client) CreateKey(ctx context.Context, req api.CreateRequest) (api.KeyInfo, error) {
	var res api.KeyInfo
	return res, c.call(ctx, api.RouteKeyCreate, req, &res)
}

func (c *Client) DeleteKey(ctx context.Context, name string) error {
	var res api.Empty
	return c.call(ctx, api.RouteKeyDelete, api.KeyName{Name: name}, &res)
}

func (c *Client) ListKeys(ctx context.Context) ([]api.KeyInfo, error) {
	var res []api.KeyInfo
	return res, c.call(ctx, api.RouteKeyList, nil, &res)
}

func (c *Client) KeyPublic(ctx context.Context, name string) (crypto.PublicKey, api.KeyInfo, error) {
	var res api.KeyPublicResponse
	if err := c.call(ctx, api.RouteKeyPublic, api.KeyName{Name: name}, &res); err != nil {
		return nil, api.KeyInfo{}, err
	}
	pub, err := x509.ParsePKIXPublicKey(res.Public)
	if err != nil {
		return nil, res.Key, fmt.Errorf("provd daemon at %s: public key: %w", c.path, err)
	}
	return pub, res.Key, nil
}

// data runs one of the endpoints that answer with bytes.
func (c *Client) data(ctx context.Context, r api.Route, req any) ([]byte, error) {
	var res api.DataResponse
	if err := c.call(ctx, r, req, &res); err != nil {
		return nil, err
	}
	return res.Data, nil
}

func (c *Client) Sign(ctx context.Context, name string, digest []byte, opts api.SignOptions) ([]byte, error) {
	return c.data(ctx, api.RouteKeySign, api.SignRequest{Name: name, Digest: digest, Scheme: opts.Scheme, Hash: api.HashName(opts.Hash)})
}

func (c *Client) HMAC(ctx context.Context, name string, data []byte) ([]byte, error) {
	return c.data(ctx, api.RouteKeyHMAC, api.DataRequest{Name: name, Data: data})
}

// ECDH returns the shared secret; the caller clears it.
func (c *Client) ECDH(ctx context.Context, name string, peer *ecdh.PublicKey) ([]byte, error) {
	if peer == nil {
		return nil, fmt.Errorf("%w: no peer public key", api.ErrBadInput)
	}
	return c.data(ctx, api.RouteKeyECDH, api.ECDHRequest{Name: name, Curve: api.CurveName(peer.Curve()), Peer: peer.Bytes()})
}

// Decrypt returns the plaintext; the caller clears it.
func (c *Client) Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error) {
	return c.data(ctx, api.RouteKeyDecrypt, api.DecryptRequest{Name: name, Ciphertext: ciphertext, Hash: api.HashName(h)})
}

func (c *Client) EncryptData(ctx context.Context, name string, plain []byte) ([]byte, error) {
	return c.data(ctx, api.RouteKeyEncrypt, api.DataRequest{Name: name, Data: plain})
}

// DecryptData returns the plaintext; the caller clears it.
func (c *Client) DecryptData(ctx context.Context, name string, envelope []byte) ([]byte, error) {
	return c.data(ctx, api.RouteKeyDecryptData, api.DataRequest{Name: name, Data: envelope})
}

// ExportKeyBlob returns a created key's TSS2 PRIVATE KEY file (PEM).
func (c *Client) ExportKeyBlob(ctx context.Context, name string) ([]byte, error) {
	return c.data(ctx, api.RouteKeyExportBlob, api.KeyName{Name: name})
}

func (c *Client) ImportKeyBlob(ctx context.Context, name string, pemData []byte) (api.KeyInfo, error) {
	var res api.KeyInfo
	return res, c.call(ctx, api.RouteKeyImportBlob, api.ImportBlobRequest{Name: name, PEM: pemData}, &res)
}

// ImportKEK sends the components to the daemon over its socket (the
// caller clears the request).
func (c *Client) ImportKEK(ctx context.Context, req api.KEKImportRequest) (api.KeyInfo, error) {
	var res api.KeyInfo
	return res, c.call(ctx, api.RouteKEKImport, req, &res)
}

// ExportKey returns the key wrapped under the KEK (RFC 5649).
func (c *Client) ExportKey(ctx context.Context, req api.KeyExportRequest) ([]byte, error) {
	return c.data(ctx, api.RouteKeyExport, req)
}

func (c *Client) ImportKey(ctx context.Context, req api.KeyImportRequest) (api.KeyInfo, error) {
	var res api.KeyInfo
	return res, c.call(ctx, api.RouteKeyImport, req, &res)
}

// PeerIdentity asks the daemon for this device's peer identity.
func (c *Client) PeerIdentity(ctx context.Context) (api.PeerIdentity, error) {
	var res api.PeerIdentity
	return res, c.call(ctx, api.RoutePeerIdentity, nil, &res)
}

func (c *Client) DupExport(ctx context.Context, req api.DupExportRequest) (api.DupFile, error) {
	var res api.DupFile
	return res, c.call(ctx, api.RouteDupExport, req, &res)
}

func (c *Client) DupImport(ctx context.Context, req api.DupImportRequest) (api.KeyInfo, error) {
	var res api.KeyInfo
	return res, c.call(ctx, api.RouteDupImport, req, &res)
}

// PKExport moves the movable PK to a peer (POST /v1/pk/export).
func (c *Client) PKExport(ctx context.Context, req api.PKExportRequest) (api.DupFile, error) {
	var res api.DupFile
	return res, c.call(ctx, api.RoutePKExport, req, &res)
}

// ProvisionFrom adopts a PK moved here (POST /v1/provision/from).
func (c *Client) ProvisionFrom(ctx context.Context, req api.PKAdoptRequest) (api.ProvisionResult, error) {
	var res api.ProvisionResult
	return res, c.call(ctx, api.RouteProvisionFrom, req, &res)
}

// PeerProve answers a residency challenge (POST /v1/peer/prove).
func (c *Client) PeerProve(ctx context.Context, ch api.PeerChallenge) (api.PeerProof, error) {
	var res api.PeerProof
	return res, c.call(ctx, api.RoutePeerProve, ch, &res)
}

// AttestIdentity is the TPM's enrollment (POST /v1/attest/identity).
func (c *Client) AttestIdentity(ctx context.Context) (fleetapi.EnrollRequest, error) {
	var res fleetapi.EnrollRequest
	return res, c.call(ctx, api.RouteAttestIdentity, nil, &res)
}

// AttestActivate activates an enrollment's credential (POST /v1/attest/activate).
func (c *Client) AttestActivate(ctx context.Context, e fleetapi.Enrollment) (api.AttestActivateResult, error) {
	var res api.AttestActivateResult
	return res, c.call(ctx, api.RouteAttestActivate, e, &res)
}

// AttestQuote quotes PCRs over a nonce (POST /v1/attest/quote).
func (c *Client) AttestQuote(ctx context.Context, req api.AttestQuoteRequest) (api.AttestQuoteResult, error) {
	var res api.AttestQuoteResult
	return res, c.call(ctx, api.RouteAttestQuote, req, &res)
}

// AttestInstall installs deliveries (POST /v1/attest/install).
func (c *Client) AttestInstall(ctx context.Context, req api.AttestInstallRequest) (api.AttestInstallResult, error) {
	var res api.AttestInstallResult
	return res, c.call(ctx, api.RouteAttestInstall, req, &res)
}

// AttestSign signs with a delivered key (POST /v1/attest/sign).
func (c *Client) AttestSign(ctx context.Context, name string, digest []byte, opts api.SignOptions) ([]byte, error) {
	return c.data(ctx, api.RouteAttestSign, api.SignRequest{Name: name, Digest: digest, Scheme: opts.Scheme, Hash: api.HashName(opts.Hash)})
}

// AttestSecret unseals a delivered secret (POST /v1/attest/secret).
func (c *Client) AttestSecret(ctx context.Context, req api.AttestSecretRequest) (api.AttestSecretResult, error) {
	var res api.AttestSecretResult
	return res, c.call(ctx, api.RouteAttestSecret, req, &res)
}

// AttestRecord keeps the endpoint's last verdict (POST /v1/attest/record).
func (c *Client) AttestRecord(ctx context.Context, v api.AttestVerdict) (api.AttestVerdict, error) {
	var res api.AttestVerdict
	return res, c.call(ctx, api.RouteAttestRecord, v, &res)
}
