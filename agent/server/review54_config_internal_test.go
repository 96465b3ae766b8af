package server

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Held: provd.yaml's role lists cannot be read two ways, and the parser is
// bounded on hostile YAML.
//
// Tried (an operator's mistake, or whoever may write the file, to give a
// role the reader of the file does not see): a duplicate roles: section, a
// duplicate crypto-officer: or user: key, a duplicate users: list (in each
// case one of the two would silently win), a second document, a role list
// given as a scalar or a map, ids that are empty, negative, or spelled so
// that Atoi and a reader disagree (" 0", "0x0", "0e0"); and an alias bomb
// (a billion laughs) and 10,000-deep nesting, which must end quickly.
//
// Secure (holds): every one is ErrConfig, and each parse ends in under 2 s.
func TestReview54ConfigRolesReadOneWay(t *testing.T) {
	bomb := "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
	for i, p := 'b', 'a'; i <= 'j'; i, p = i+1, i {
		bomb += string(i) + ": &" + string(i) + " [" + strings.Repeat("*"+string(p)+",", 9) + "*" + string(p) + "]\n"
	}
	bomb += "roles:\n  user:\n    users: *j\n"
	for name, doc := range map[string]string{
		"two roles sections": "roles:\n  user:\n    users: [root]\nroles:\n  user:\n    groups: [provd]\n",
		"two officer keys":   "roles:\n  crypto-officer:\n    users: [root]\n  crypto-officer:\n    groups: [provd]\n",
		"two user keys":      "roles:\n  user:\n    users: [root]\n  user:\n    groups: [provd]\n",
		"two users lists":    "roles:\n  user:\n    users: [root]\n    users: [4242]\n",
		"second document":    "roles:\n  user:\n    users: [root]\n---\nroles:\n  user:\n    users: [4242]\n",
		"scalar list":        "roles:\n  user:\n    users: root\n",
		"map list":           "roles:\n  user:\n    users: {root: 1}\n",
		"empty id":           "roles:\n  user:\n    users: [\"\"]\n",
		"negative id":        "roles:\n  user:\n    users: [-1]\n",
		"spaced id":          "roles:\n  user:\n    users: [\" 0\"]\n",
		"hex id":             "roles:\n  user:\n    users: [0x0]\n",
		"float id":           "roles:\n  user:\n    users: [0e0]\n",
		"unknown role":       "roles:\n  officer:\n    users: [root]\n",
		"alias bomb":         bomb,
		"deep nesting":       "roles: " + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			cfg, err := ParseConfig("provd.yaml", []byte(doc), fakeLookup{})
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("parse took %v", took)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("accepted (err %v): officer %+v user %+v", err, cfg.Roles.Officer, cfg.Roles.User)
			}
		})
	}
}
