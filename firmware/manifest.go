// Package firmware is the firmware manifest (docs/firmware.md,
// docs/formats.md) and its verification against image files: what the
// firmware signer signs offline (provd fw sign) and what the boot hook
// checks before anything trusts the images (provd fw verify). It exists
// apart from the agent because the boot hook runs before the daemon, on a
// device that may never have been provisioned: it needs the manifest, the
// images and the signer the TPM anchors, nothing of provd's state.
package firmware

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/policy"
)

// Errors a verification ends with; each has its exit code (api).
var (
	ErrBadManifest  = errors.New("firmware: the manifest is malformed")
	ErrBadSignature = errors.New("firmware: the manifest's signature does not verify, or its signer is not the anchored one")
	ErrDigest       = errors.New("firmware: an image does not match the manifest")
	ErrMissingImage = errors.New("firmware: an image the manifest lists is missing")
	// ErrRollback: the manifest's version is below the lowest the TPM's
	// anti-rollback counter accepts.
	ErrRollback = errors.New("firmware: the manifest's version is below the lowest the anti-rollback counter accepts")
	// ErrNoAnchor: the TPM holds no signer anchor (or no anti-rollback
	// counter): nothing can be authenticated.
	ErrNoAnchor = errors.New("firmware: no firmware signer is anchored in the TPM")
	// ErrAnchorUntrusted: the NV index at the anchor's (or the counter's)
	// handle is not one provd defined: other attributes, another write
	// policy, or content not in the anchor's form.
	ErrAnchorUntrusted = errors.New("firmware: the TPM's signer anchor is not one provd defined")
)

// Format is the manifest file's and payload's format number.
const Format = 1

// MaxManifest bounds a manifest file: 4,096 images with SHA-256 digests and
// names of about 60 bytes fit (Sign refuses what would not).
const MaxManifest = 1 << 20

// MaxImages bounds the images of one manifest.
const MaxImages = 4096

// signedPrefix separates what a firmware signer signs from anything else
// the same key could sign (a signed PCR policy's aHash, an approval).
var signedPrefix = []byte("provd firmware manifest v1\x00")

// Image is one image the manifest lists: its path under the image root, its
// size and its digest.
type Image struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Hash   string `json:"hash"`   // "sha256" or "sha384"
	Digest string `json:"digest"` // hex
}

// Manifest is what the signer vouches for: a device class, a monotonic
// version (the anti-rollback counter's unit) and the images.
type Manifest struct {
	Format  int     `json:"format"`
	Class   string  `json:"class"`
	Version uint64  `json:"version"`
	Images  []Image `json:"images"`
}

// Signed is a parsed manifest file: the payload exactly as signed, the
// manifest it holds, its signer and signature. Parse checked that the
// signature is the embedded signer's; whether that signer is trusted is
// the anchor's say (SignerName against the TPM's).
type Signed struct {
	Manifest   Manifest
	Payload    []byte
	Signer     crypto.PublicKey
	SignerName []byte // the signer's TPM name (policy.SignerName)
	Signature  policy.Signature
}

// fileJSON is the manifest file.
type fileJSON struct {
	Format    int              `json:"format"`
	Manifest  []byte           `json:"manifest"` // the payload, base64
	Signer    string           `json:"signer"`   // PEM public key
	Signature policy.Signature `json:"signature"`
}

// signedDigest is what the signature covers.
func signedDigest(payload []byte) []byte {
	h := sha256.New()
	h.Write(signedPrefix)
	h.Write(payload)
	return h.Sum(nil)
}

// Digest is the manifest's measurement: SHA-256 of the signed payload, as
// the boot hook extends it and a verifier recomputes it.
func (s *Signed) Digest() []byte {
	d := sha256.Sum256(s.Payload)
	return d[:]
}

// DigestFor is the manifest's measurement in a PCR bank of hash h: h of
// the signed payload (Digest for SHA-256).
func (s *Signed) DigestFor(h crypto.Hash) []byte {
	hh := h.New()
	hh.Write(s.Payload)
	return hh.Sum(nil)
}

// Sign writes the manifest file for m, signed by signer.
func Sign(signer crypto.Signer, m Manifest) ([]byte, error) {
	m.Format = Format
	if err := m.check(); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	// The file carries the payload in base64 and the signer's key: keep
	// room for both under MaxManifest (found by review: Sign wrote what
	// Parse refuses).
	if len(payload)*4/3+8192 > MaxManifest {
		return nil, fmt.Errorf("%w: a manifest of %d bytes, too large for a manifest file of %d", ErrBadManifest, len(payload), MaxManifest)
	}
	sig, err := policy.SignDigest(signer, signedDigest(payload))
	if err != nil {
		return nil, err
	}
	pemKey, err := policy.MarshalPublicKeyPEM(signer.Public())
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(fileJSON{Format: Format, Manifest: payload, Signer: string(pemKey), Signature: policy.Signature{TPMTSignature: sig}}, "", "  ")
}

// Parse reads a manifest file strictly (one JSON object, no unknown or
// duplicate keys, no trailing data, at most MaxManifest bytes, the payload
// likewise), checks the manifest's fields and verifies the signature with
// the embedded signer. A signature that does not verify is ErrBadSignature;
// anything else malformed is ErrBadManifest.
func Parse(b []byte) (*Signed, error) {
	if len(b) > MaxManifest {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadManifest, len(b), MaxManifest)
	}
	var f fileJSON
	if err := strictjson.Decode(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if f.Format != Format {
		return nil, fmt.Errorf("%w: format %d, this provd reads %d", ErrBadManifest, f.Format, Format)
	}
	s := &Signed{Payload: f.Manifest, Signature: f.Signature}
	var err error
	if s.Signer, err = policy.ParsePublicKeyPEM([]byte(f.Signer)); err != nil {
		return nil, fmt.Errorf("%w: signer: %v", ErrBadManifest, err)
	}
	if s.SignerName, err = policy.SignerName(s.Signer); err != nil {
		return nil, fmt.Errorf("%w: signer: %v", ErrBadManifest, err)
	}
	// The signature first: a payload changed after signing is a bad
	// signature whatever it now says (found by review: it read as a
	// malformed manifest, exit 2).
	if err := policy.VerifyDigest(s.Signer, signedDigest(s.Payload), s.Signature.TPMTSignature); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if err := strictjson.Decode(f.Manifest, &s.Manifest); err != nil {
		return nil, fmt.Errorf("%w: the signed manifest: %v", ErrBadManifest, err)
	}
	if err := s.Manifest.check(); err != nil {
		return nil, err
	}
	// Exactly the bytes Sign writes for it: Go's decoder matches keys
	// without regard to case (and folds "ſ" to "s"), so another reader of
	// the same signed bytes could see other fields (found by review).
	if canon, err := json.Marshal(s.Manifest); err != nil || !bytes.Equal(canon, s.Payload) {
		return nil, fmt.Errorf("%w: the signed manifest is not in its canonical form (the one provd fw sign writes)", ErrBadManifest)
	}
	return s, nil
}

// SignedBy checks that the manifest's signer is one of the anchored signer
// names (the TPM's anchor: the current signer, and the next during a
// rotation).
func (s *Signed) SignedBy(anchored ...[]byte) error {
	for _, n := range anchored {
		if len(n) > 0 && bytes.Equal(n, s.SignerName) {
			return nil
		}
	}
	return fmt.Errorf("%w: signed by %x, which the anchor does not name", ErrBadSignature, s.SignerName)
}

// MaxClass bounds a device class, as agent.PolicyRef does.
const MaxClass = 23

// CheckClass accepts a device class: 1..MaxClass of a-z, 0-9, '.', '_', '-'.
func CheckClass(c string) error {
	if c == "" || len(c) > MaxClass || strings.Trim(c, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		return fmt.Errorf("%w: device class %q: 1..%d of a-z, 0-9, '.', '_', '-'", ErrBadManifest, c, MaxClass)
	}
	return nil
}

// check validates a manifest's fields: the format, a class of a-z, 0-9,
// '.', '_', '-' (at most 23), 1..MaxImages images with distinct valid
// names, sizes >= 0, an approved hash and a digest of its size.
func (m Manifest) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadManifest, fmt.Sprintf(format, a...))
	}
	if m.Format != Format {
		return bad("payload format %d, want %d", m.Format, Format)
	}
	if err := CheckClass(m.Class); err != nil {
		return err
	}
	if len(m.Images) == 0 || len(m.Images) > MaxImages {
		return bad("%d images, want 1..%d", len(m.Images), MaxImages)
	}
	seen := map[string]bool{}
	for _, im := range m.Images {
		if err := checkName(im.Name); err != nil {
			return bad("%v", err)
		}
		// Names that differ only in case are one file on FAT (an EFI
		// system partition): refused (found by review).
		if seen[strings.ToLower(im.Name)] {
			return bad("image %q listed twice (names are compared without case)", im.Name)
		}
		seen[strings.ToLower(im.Name)] = true
		if im.Size < 0 {
			return bad("image %q: size %d", im.Name, im.Size)
		}
		h, err := imageHash(im.Hash)
		if err != nil {
			return bad("image %q: %v", im.Name, err)
		}
		d, err := hex.DecodeString(im.Digest)
		if err != nil || len(d) != h.Size() || im.Digest != strings.ToLower(im.Digest) {
			return bad("image %q: digest: want %d lower-case hex bytes", im.Name, h.Size())
		}
	}
	return nil
}

// checkName accepts an image path relative to the image root: slash
// separated components of A-Z, a-z, 0-9, '.', '_', '-', none empty, "." or
// "..", at most 255 bytes: nothing that leaves the root or needs quoting.
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("image name %q: 1..255 bytes", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || c == "." || c == ".." || strings.Trim(c, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
			return fmt.Errorf("image name %q: want a relative path of [A-Za-z0-9._-] components", name)
		}
		// FAT drops a name's trailing dots: "boot.efi." is "boot.efi" on
		// an EFI system partition, one file listed twice (review 49).
		if strings.HasSuffix(c, ".") {
			return fmt.Errorf("image name %q: a component ends in '.', which FAT drops", name)
		}
	}
	return nil
}

// imageHash is an image digest's hash: SHA-256 or SHA-384.
func imageHash(name string) (crypto.Hash, error) {
	switch name {
	case "sha256":
		return crypto.SHA256, nil
	case "sha384":
		return crypto.SHA384, nil
	}
	return 0, fmt.Errorf("hash %q: %w (sha256 or sha384)", name, catalog.ErrNotApproved)
}
