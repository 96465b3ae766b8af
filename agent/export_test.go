package agent

// ParseSealed exposes the sealed-blob parser to the fuzz target.
func ParseSealed(data []byte) error {
	_, _, err := parseSealed(data)
	return err
}
