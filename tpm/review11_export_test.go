package tpm

// Review11KeptKey is the session key of the shared session kept between
// Shares (KeepShared), the slice itself (not a copy), so that a test can
// see it cleared once the session ends; nil when none is kept.
func Review11KeptKey(t *TPM) []byte {
	if k := t.kept; k != nil && k.k != nil {
		return k.k.sessionKey
	}
	return nil
}
