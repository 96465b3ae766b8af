// Package pemblock reads a file that must hold exactly one PEM block, the
// one way provd reads a key, public key or key file handed to it: one
// BEGIN line in the whole file, its block decoding, nothing after it but
// whitespace. Text before it is allowed, as OpenSSL allows it (`openssl
// x509 -text` and `openssl ec -text` write a dump there, review 60), since
// with one BEGIN line there is no other block to read it as.
//
// It exists because encoding/pem's Decode skips whatever does not decode
// as a block and returns the next one: a file that opens with a broken
// BEGIN line, or a block whose base64 is corrupt, followed by a
// well-formed block, is read as that second block, while OpenSSL-based
// tools stop at the first and show an error or another key (found by
// review 58: an operator inspected one key file, provd imported another).
package pemblock

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrFormat marks input that is not one PEM block alone.
var ErrFormat = errors.New("not one PEM block")

// DER is data's DER: the bytes of its one PEM block of type typ when data
// holds a BEGIN line (Decode), data itself otherwise (a file given as
// DER or PEM).
func DER(data []byte, typ string) ([]byte, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		return data, nil
	}
	blk, err := Decode(data, typ)
	if err != nil {
		return nil, err
	}
	return blk.Bytes, nil
}

// Decode returns data's one PEM block, of one of types, without headers.
func Decode(data []byte, types ...string) (*pem.Block, error) {
	switch bytes.Count(data, []byte("-----BEGIN")) {
	case 0:
		return nil, fmt.Errorf("%w: no PEM block", ErrFormat)
	case 1:
	default:
		return nil, fmt.Errorf("%w: more than one BEGIN line", ErrFormat)
	}
	blk, rest := pem.Decode(data)
	if blk == nil {
		return nil, fmt.Errorf("%w: the PEM block does not decode", ErrFormat)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM block", ErrFormat)
	}
	if !slices.Contains(types, blk.Type) {
		return nil, fmt.Errorf("%w: a PEM block %q, want %s", ErrFormat, blk.Type, strings.Join(types, " or "))
	}
	if len(blk.Headers) != 0 {
		return nil, fmt.Errorf("%w: PEM headers (an encrypted key?)", ErrFormat)
	}
	return blk, nil
}
