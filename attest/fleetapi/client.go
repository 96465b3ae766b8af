package fleetapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/internal/strictjson"
)

// Client talks to a fleet endpoint: a device's calls (enroll, activate,
// challenge, attest) and, with Token, an operator's.
type Client struct {
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// NewClient returns a client for the endpoint at baseURL (https://...),
// trusting only the certificates in caPEM (the endpoint's self-signed
// certificate, pinned) when given, else the system's roots; TLS 1.3 only.
func NewClient(baseURL string, caPEM []byte, token string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		// TLS always (found by review: an http:// URL sent the operator's
		// token in the clear).
		return nil, fmt.Errorf("endpoint %q: want https://HOST:PORT", baseURL)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("--ca-cert: no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token,
		HTTP: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true},
			CheckRedirect: refuseRedirect}}, nil
}

// errRedirect refuses an answer that sends the request elsewhere.
var errRedirect = errors.New("the fleet endpoint answered with a redirect, which its API never does: not followed")

// refuseRedirect is the client's CheckRedirect: the endpoint's API has no
// redirects, and following one leaves the pinned channel (found by review
// 59: Go's client resent the request, the operator's token and the
// secret's body, to an http:// URL of the same host, and the body to any
// other host).
func refuseRedirect(*http.Request, []*http.Request) error { return errRedirect }

// APIError is the endpoint's error answer.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("fleet endpoint: %s (HTTP %d): %s", e.Code, e.Status, e.Message)
}

// Unwrap gives the error's kind (api/errkind) by its status, so that
// commands exit as for the same refusal anywhere else: 400 bad input;
// 401, 403 and 422 not permitted; 404 not found.
func (e *APIError) Unwrap() error {
	switch e.Status {
	case http.StatusBadRequest:
		return errkind.ErrBadInput
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusUnprocessableEntity:
		return errkind.ErrNotPermitted
	case http.StatusNotFound:
		return errkind.ErrNotFound
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	rsp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(rsp.Body, MaxBody+1))
	if err != nil {
		return err
	}
	if rsp.StatusCode != http.StatusOK {
		var e ErrorBody
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return &APIError{Status: rsp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
		}
		return &APIError{Status: rsp.StatusCode, Code: "http", Message: strings.TrimSpace(string(b))}
	}
	return strictjson.Decode(b, out)
}

// Enroll sends an enrollment.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (res Enrollment, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/enroll", req, &res)
}

// Activate returns the credential's secret.
func (c *Client) Activate(ctx context.Context, req ActivateRequest) (res Device, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/activate", req, &res)
}

// Challenge asks for a nonce.
func (c *Client) Challenge(ctx context.Context, req ChallengeRequest) (res Challenge, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/challenge", req, &res)
}

// Attest sends evidence and returns the verdict.
func (c *Client) Attest(ctx context.Context, req AttestRequest) (res Verdict, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/attest", req, &res)
}

// ProvePeer answers a residency challenge and registers the transfer key.
func (c *Client) ProvePeer(ctx context.Context, req PeerProveRequest) (res PeerRegistration, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/attest/peer", req, &res)
}

// Authority returns the endpoint's duplication authority key.
func (c *Client) Authority(ctx context.Context) (res Authority, err error) {
	return res, c.do(ctx, http.MethodGet, "/v1/authority", nil, &res)
}

// ApproveDuplication asks for the endpoint's approval of a key's
// duplication to a device's transfer key (operator).
func (c *Client) ApproveDuplication(ctx context.Context, id string, req DupApprovalRequest) (res DupApproval, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/dup-approval", req, &res)
}

// Devices lists devices (operator).
func (c *Client) Devices(ctx context.Context) (res []Device, err error) {
	return res, c.do(ctx, http.MethodGet, "/v1/devices", nil, &res)
}

// Device shows one device (operator).
func (c *Client) Device(ctx context.Context, id string) (res Device, err error) {
	return res, c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id), nil, &res)
}

// Appraisals is a device's appraisal history, newest first (operator).
func (c *Client) Appraisals(ctx context.Context, id string) (res []Verdict, err error) {
	return res, c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id)+"/appraisals", nil, &res)
}

// Revoke revokes a device (operator).
func (c *Client) Revoke(ctx context.Context, id string) (res Device, err error) {
	return res, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/revoke", nil, &res)
}

// SetPolicy sets a class's policy (operator).
func (c *Client) SetPolicy(ctx context.Context, p Policy) (res Policy, err error) {
	return res, c.do(ctx, http.MethodPut, "/v1/policies/"+url.PathEscape(p.Class), p, &res)
}

// Policy shows a class's policy (operator).
func (c *Client) Policy(ctx context.Context, class string) (res Policy, err error) {
	return res, c.do(ctx, http.MethodGet, "/v1/policies/"+url.PathEscape(class), nil, &res)
}

// PutSecret stores a secret (kind KindSecret) or a key (KindKey,
// PKCS#8 DER) for a class (operator).
func (c *Client) PutSecret(ctx context.Context, class, name, kind string, value []byte) (res SecretInfo, err error) {
	return res, c.do(ctx, http.MethodPut, "/v1/secrets/"+url.PathEscape(class)+"/"+url.PathEscape(name), SecretRequest{Kind: kind, Value: value}, &res)
}

// DeleteSecret removes a class's secret or key (operator).
func (c *Client) DeleteSecret(ctx context.Context, class, name string) error {
	var res map[string]string
	return c.do(ctx, http.MethodDelete, "/v1/secrets/"+url.PathEscape(class)+"/"+url.PathEscape(name), nil, &res)
}

// Secrets lists a class's secrets, names only (operator).
func (c *Client) Secrets(ctx context.Context, class string) (res []SecretInfo, err error) {
	return res, c.do(ctx, http.MethodGet, "/v1/secrets/"+url.PathEscape(class), nil, &res)
}
