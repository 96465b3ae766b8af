package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
)

// manifest is the on-disk manifest.json. Objects hold the agent's typed records
// as raw JSON so that the store stays ignorant of them; Blobs map a blob's name
// to the file holding its current generation, with the size and SHA-256 that a
// read checks, so a torn or substituted blob file is caught as ErrCorrupt
// instead of being handed to the TPM.
type manifest struct {
	Schema     int                        `json:"schema"`
	Generation uint64                     `json:"generation"`
	Objects    map[string]json.RawMessage `json:"objects"`
	Blobs      map[string]blobRef         `json:"blobs"`
}

type blobRef struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func newManifest() *manifest {
	return &manifest{
		Schema:  SchemaVersion,
		Objects: map[string]json.RawMessage{},
		Blobs:   map[string]blobRef{},
	}
}

func (m *manifest) clone() *manifest {
	c := *m
	c.Objects = maps.Clone(m.Objects)
	c.Blobs = maps.Clone(m.Blobs)
	return &c
}

func (m *manifest) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// parseManifest decodes and validates manifest.json. The schema is probed
// first so that a newer manifest is reported as ErrUnknownSchema even if its
// other fields would not fit this build's structure. Within schema 1 decoding
// is strict (unknown fields, trailing data, invalid names or references are
// ErrCorrupt): whatever this build cannot represent it must not rewrite.
func parseManifest(b []byte) (*manifest, error) {
	var probe struct {
		Schema *json.Number `json:"schema"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	if probe.Schema == nil {
		return nil, fmt.Errorf("%w: manifest: no schema version", ErrCorrupt)
	}
	v, err := probe.Schema.Int64()
	if err != nil || v < 1 {
		return nil, fmt.Errorf("%w: manifest: bad schema version %q", ErrCorrupt, probe.Schema.String())
	}
	if v != SchemaVersion {
		return nil, fmt.Errorf("%w: manifest has schema %d, this provd knows %d; upgrade provd", ErrUnknownSchema, v, SchemaVersion)
	}

	m := &manifest{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: manifest: trailing data", ErrCorrupt)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	if m.Objects == nil {
		m.Objects = map[string]json.RawMessage{}
	}
	if m.Blobs == nil {
		m.Blobs = map[string]blobRef{}
	}
	for k, raw := range m.Objects {
		var c bytes.Buffer
		if err := json.Compact(&c, raw); err != nil {
			return nil, fmt.Errorf("%w: manifest: object %q: %v", ErrCorrupt, k, err)
		}
		m.Objects[k] = c.Bytes()
	}
	return m, nil
}

func (m *manifest) validate() error {
	if m.Schema != SchemaVersion {
		return fmt.Errorf("schema %d", m.Schema)
	}
	// Generation 0 is the state before the first commit; a file on disk was
	// always written by a commit.
	if m.Generation == 0 {
		return fmt.Errorf("generation 0")
	}
	for k := range m.Objects {
		if !ValidName(k) {
			return fmt.Errorf("invalid object name %q", k)
		}
	}
	for k, b := range m.Blobs {
		if !ValidName(k) {
			return fmt.Errorf("invalid blob name %q", k)
		}
		name, gen, ok := splitBlobFile(b.File)
		if !ok || name != k || gen > m.Generation {
			return fmt.Errorf("blob %q: bad file name %q", k, b.File)
		}
		if b.Size < 0 || b.Size > maxBlob {
			return fmt.Errorf("blob %q: size %d", k, b.Size)
		}
		if len(b.SHA256) != 64 {
			return fmt.Errorf("blob %q: bad sha256", k)
		}
		for i := 0; i < len(b.SHA256); i++ {
			if c := b.SHA256[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return fmt.Errorf("blob %q: bad sha256", k)
			}
		}
	}
	return nil
}
