package attest

// ParseTCGSAN exposes the SAN parser to the external tests and fuzz targets:
// it runs only on certificates whose SAN is critical, so fuzzing it through
// VerifyEKCertificate alone would rarely reach it.
func ParseTCGSAN(ext []byte) (manufacturer, model, version string, err error) {
	id, err := parseTCGSAN(ext)
	return id.manufacturer, id.model, id.version, err
}
