package strictjson

import "testing"

func TestDecode(t *testing.T) {
	type T struct {
		Bank string `json:"bank"`
		N    int    `json:"n"`
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"bank":"sha256","n":1}`, true},
		{`{"bank":"sha256","bank":"sha384"}`, false},
		{`{"bank":"sha256","BANK":"sha384"}`, false},
		{`{"bank":"sha256","Bank":"sha384"}`, false},
		{`{"bank":"sha256","other":1}`, false},
		{`{"bank":"sha256"} {}`, false},
		{`{"bank":"sha256"}x`, false},
		{`{"bank":"sha256","n":{"a":1,"a":2}}`, false},
		{`[1,2]`, false},
	} {
		var v T
		if err := Decode([]byte(tc.in), &v); (err == nil) != tc.ok {
			t.Errorf("Decode(%s) = %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"bank":"sha256","n":1}`))
	f.Add([]byte(`{"a":{"b":[1,{"c":2}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v map[string]any
		_ = Decode(data, &v)
	})
}
