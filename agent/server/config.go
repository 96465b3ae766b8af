package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/provd/provd/attest"
)

// DefaultConfigPath is the daemon's configuration file.
const DefaultConfigPath = "/etc/provd/provd.yaml"

// Config is the daemon's validated configuration (provd.yaml).
type Config struct {
	// TPM names the TPM (tpm.Options.Spec); "" is the first device found.
	TPM    string
	Socket SocketConfig
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
	Roles    *Roles
	// RequestTimeout bounds how long a request waits for the TPM queue.
	RequestTimeout time.Duration
	// MaxWaiting bounds the requests waiting for the TPM queue; more are
	// refused at once with ErrBusy instead of piling up goroutines.
	MaxWaiting int
	// EKCA is the PEM bundle of manufacturer certificates (ek_ca, read and
	// checked when the file is loaded) that first contact verifies the EK
	// certificate with when a provision or tpm identity request brings
	// none; a request's own bundle wins. nil: none configured. EKCAPath is
	// the file it was read from.
	EKCA     []byte
	EKCAPath string
}

// SocketConfig is where the daemon listens when not socket-activated.
type SocketConfig struct {
	Path  string
	Mode  os.FileMode
	Group string
}

// Defaults used when the file leaves a setting out.
const (
	DefaultSocket         = "/run/provd/provd.sock"
	DefaultSocketMode     = os.FileMode(0o660)
	DefaultSocketGroup    = "provd"
	DefaultRequestTimeout = 30 * time.Second
	DefaultMaxWaiting     = 1024
	// Group names of the default role mapping.
	AdminGroup = "provd-admin"
	UserGroup  = "provd"
)

// Lookup resolves user and group names to ids. OSLookup uses the system's
// databases; tests inject their own.
type Lookup interface {
	UserID(name string) (int, error)
	GroupID(name string) (int, error)
}

// OSLookup resolves names with os/user.
type OSLookup struct{}

func (OSLookup) UserID(name string) (int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(u.Uid)
}

func (OSLookup) GroupID(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// DefaultConfig is the configuration without a file: root holds both roles,
// members of provd-admin are crypto officers and members of provd users.
// Groups that do not exist are left out (nobody can be in them), with a
// warning in the returned notes.
func DefaultConfig(lk Lookup) (Config, []string) {
	if lk == nil {
		lk = OSLookup{}
	}
	var notes []string
	officer := &RoleMembers{UIDs: []int{0}}
	user := &RoleMembers{UIDs: []int{0}}
	for _, m := range []struct {
		rm    *RoleMembers
		group string
	}{{officer, AdminGroup}, {user, UserGroup}} {
		gid, err := lk.GroupID(m.group)
		if err != nil {
			notes = append(notes, fmt.Sprintf("group %s does not exist; its role has only root", m.group))
			continue
		}
		m.rm.GIDs = append(m.rm.GIDs, gid)
	}
	return Config{
		Socket:         SocketConfig{Path: DefaultSocket, Mode: DefaultSocketMode, Group: DefaultSocketGroup},
		LogLevel:       slog.LevelInfo,
		Roles:          &Roles{Officer: *officer, User: *user},
		RequestTimeout: DefaultRequestTimeout,
		MaxWaiting:     DefaultMaxWaiting,
	}, notes
}

// ErrConfig: the configuration file does not validate. The message names the
// file and line.
var ErrConfig = errors.New("invalid configuration")

// LoadConfig reads and validates a provd.yaml. Unknown keys, wrong types,
// unknown users or groups, bad modes, levels and durations are errors that
// name the line; settings the file leaves out keep their defaults. Group
// names must exist (a typo would otherwise silently take a role away).
func LoadConfig(path string, lk Lookup) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	return ParseConfig(path, data, lk)
}

// ParseConfig validates data as LoadConfig does; name is used in messages.
func ParseConfig(name string, data []byte, lk Lookup) (Config, error) {
	if lk == nil {
		lk = OSLookup{}
	}
	fail := func(line int, format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: %s:%d: %s", ErrConfig, name, line, fmt.Sprintf(format, args...))
	}
	var f fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return fail(1, "empty file")
		}
		return Config{}, fmt.Errorf("%w: %s: %s", ErrConfig, name, yamlMessage(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fail(extra.Line, "a second YAML document; provd.yaml holds one")
	}

	cfg, _ := DefaultConfig(constLookup{})
	cfg.Roles = &Roles{}
	if f.TPM.Device.set {
		cfg.TPM = f.TPM.Device.s
		if cfg.TPM == "" {
			return fail(f.TPM.Device.line, "tpm.device is empty; leave it out for the first device found")
		}
	}
	if v := f.Socket.Path; v.set {
		if !strings.HasPrefix(v.s, "/") || filepath.Clean(v.s) != v.s {
			return fail(v.line, "socket.path %q: want an absolute path with no \".\", \"..\" or \"//\" in it", v.s)
		}
		cfg.Socket.Path = v.s
	}
	if v := f.Socket.Mode; v.set {
		m, err := strconv.ParseUint(v.s, 8, 32)
		if err != nil || m > 0o777 || m&0o600 != 0o600 {
			return fail(v.line, "socket.mode %q: want an octal mode such as \"0660\" (the owner needs rw)", v.s)
		}
		cfg.Socket.Mode = os.FileMode(m)
	}
	if v := f.Socket.Group; v.set {
		cfg.Socket.Group = v.s
	}
	if v := f.Log.Level; v.set {
		if err := cfg.LogLevel.UnmarshalText([]byte(v.s)); err != nil || !validLevel(v.s) {
			return fail(v.line, "log.level %q: want debug, info, warn or error", v.s)
		}
	}
	if v := f.Limits.RequestTimeout; v.set {
		d, err := time.ParseDuration(v.s)
		if err != nil || d < time.Second || d > 10*time.Minute {
			return fail(v.line, "limits.request_timeout %q: want a duration from 1s to 10m, such as 30s", v.s)
		}
		cfg.RequestTimeout = d
	}
	if v := f.Limits.MaxWaiting; v.set {
		n, err := strconv.Atoi(v.s)
		if err != nil || n < 1 || n > 1<<16 {
			return fail(v.line, "limits.max_waiting %q: want a number from 1 to 65536", v.s)
		}
		cfg.MaxWaiting = n
	}
	if v := f.EKCA; v.set {
		if !strings.HasPrefix(v.s, "/") {
			return fail(v.line, "ek_ca %q: want an absolute path to a PEM bundle", v.s)
		}
		b, err := os.ReadFile(v.s)
		if err != nil {
			return fail(v.line, "ek_ca: %v", err)
		}
		if _, err := attest.CertPoolFromPEM(b); err != nil {
			return fail(v.line, "ek_ca %s: %v", v.s, strings.TrimPrefix(err.Error(), "attest: "))
		}
		cfg.EKCA, cfg.EKCAPath = b, v.s
	}
	if f.Roles == nil {
		// No roles section: the default mapping (line 0: not in the file).
		f.Roles = &rolesConfig{
			Officer: roleConfig{Users: []scalar{{s: "0"}}, Groups: []scalar{{s: AdminGroup}}},
			User:    roleConfig{Users: []scalar{{s: "0"}}, Groups: []scalar{{s: UserGroup}}},
		}
	}
	for _, r := range []struct {
		key  string
		from roleConfig
		to   *RoleMembers
	}{{"crypto-officer", f.Roles.Officer, &cfg.Roles.Officer}, {"user", f.Roles.User, &cfg.Roles.User}} {
		for _, u := range r.from.Users {
			id, err := resolveID(u.s, lk.UserID)
			if err != nil {
				return fail(u.line, "roles.%s.users: user %q: %v", r.key, u.s, err)
			}
			r.to.UIDs = append(r.to.UIDs, id)
		}
		for _, g := range r.from.Groups {
			id, err := resolveID(g.s, lk.GroupID)
			if err != nil && g.line == 0 {
				continue // the default mapping's group does not exist here
			}
			if err != nil {
				return fail(g.line, "roles.%s.groups: group %q: %v (create it, e.g. with systemd-sysusers)", r.key, g.s, err)
			}
			r.to.GIDs = append(r.to.GIDs, id)
		}
	}
	return cfg, nil
}

func validLevel(s string) bool {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}

// resolveID takes a numeric id as it is and looks a name up.
func resolveID(s string, lookup func(string) (int, error)) (int, error) {
	if s == "" {
		return 0, errors.New("empty name")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, errors.New("negative id")
		}
		return n, nil
	}
	id, err := lookup(s)
	if err != nil {
		var uerr user.UnknownUserError
		var gerr user.UnknownGroupError
		if errors.As(err, &uerr) || errors.As(err, &gerr) {
			return 0, errors.New("does not exist")
		}
		return 0, err
	}
	return id, nil
}

// yamlMessage flattens yaml.v3's multi-line type errors ("line 3: field x
// not found in type ...") into one line without Go type names.
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			if i := strings.Index(m, " in type "); i > 0 {
				m = m[:i] + " (unknown key)"
			} else if i := strings.Index(m, " into "); i > 0 {
				m = m[:i] + ": wrong type for this key"
			}
			msgs[i] = m
		}
		return strings.Join(msgs, "; ")
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// constLookup resolves nothing: DefaultConfig's base for ParseConfig.
type constLookup struct{}

func (constLookup) UserID(string) (int, error)  { return 0, fs.ErrNotExist }
func (constLookup) GroupID(string) (int, error) { return 0, fs.ErrNotExist }

// fileConfig is provd.yaml as written. Every leaf is a scalar that remembers
// its line, so semantic errors can point at it.
type fileConfig struct {
	TPM struct {
		Device scalar `yaml:"device"`
	} `yaml:"tpm"`
	Socket struct {
		Path  scalar `yaml:"path"`
		Mode  scalar `yaml:"mode"`
		Group scalar `yaml:"group"`
	} `yaml:"socket"`
	Log struct {
		Level scalar `yaml:"level"`
	} `yaml:"log"`
	Limits struct {
		RequestTimeout scalar `yaml:"request_timeout"`
		MaxWaiting     scalar `yaml:"max_waiting"`
	} `yaml:"limits"`
	EKCA  scalar       `yaml:"ek_ca"`
	Roles *rolesConfig `yaml:"roles"` // nil: the default mapping
}

type rolesConfig struct {
	Officer roleConfig `yaml:"crypto-officer"`
	User    roleConfig `yaml:"user"`
}

type roleConfig struct {
	Users  []scalar `yaml:"users"`
	Groups []scalar `yaml:"groups"`
}

// scalar is a YAML scalar and where it was.
type scalar struct {
	s    string
	line int
	set  bool
}

func (v *scalar) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a single value", n.Line)
	}
	*v = scalar{s: n.Value, line: n.Line, set: true}
	return nil
}
