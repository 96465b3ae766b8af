package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Role is a set of FIPS 140 roles a caller holds.
type Role uint8

const (
	// RoleOfficer is the crypto officer: provisioning, policy install, key
	// life cycle (create, import, export, delete, duplication), zeroize.
	RoleOfficer Role = 1 << iota
	// RoleUser uses keys: seal, unseal, sign, hmac, ecdh, decrypt, csr, pub,
	// list.
	RoleUser
	// RoleAny is either role: reading status and the TPM's information.
	RoleAny = RoleOfficer | RoleUser
)

func (r Role) String() string {
	var s []string
	if r&RoleOfficer != 0 {
		s = append(s, "crypto-officer")
	}
	if r&RoleUser != 0 {
		s = append(s, "user")
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "+")
}

// Roles maps callers to roles. A caller holds a role when its uid is listed
// or its primary or any supplementary group is. The roles are separate: a
// crypto officer does not use keys unless it is also a user (root is both in
// the default mapping).
type Roles struct {
	Officer, User RoleMembers
}

// RoleMembers lists the uids and gids that hold one role.
type RoleMembers struct {
	UIDs, GIDs []int
}

func (m RoleMembers) has(c Caller) bool {
	if slices.Contains(m.UIDs, c.UID) || slices.Contains(m.GIDs, c.GID) {
		return true
	}
	for _, g := range c.Groups {
		if slices.Contains(m.GIDs, g) {
			return true
		}
	}
	return false
}

// Of returns the roles c holds.
func (r *Roles) Of(c Caller) Role {
	var role Role
	if r.Officer.has(c) {
		role |= RoleOfficer
	}
	if r.User.has(c) {
		role |= RoleUser
	}
	return role
}

// Caller is the process at the other end of a connection, as the kernel
// reports it (SO_PEERCRED, SO_PEERGROUPS) at connect time: nothing the
// caller sends can change it.
type Caller struct {
	PID, UID, GID int
	// Groups are the supplementary groups.
	Groups []int
}

func (c Caller) String() string {
	return fmt.Sprintf("uid %d gid %d groups %v pid %d", c.UID, c.GID, c.Groups, c.PID)
}

type callerKey struct{}

// callerResult is what ConnContext found for a connection.
type callerResult struct {
	c   Caller
	err error
}

// withCaller is the http.Server's ConnContext: it reads the peer's
// credentials once per connection.
func withCaller(ctx context.Context, conn net.Conn) context.Context {
	if lc, ok := conn.(*limitedConn); ok {
		return context.WithValue(ctx, callerKey{}, lc.caller) // read at accept
	}
	c, err := PeerCredentials(conn)
	return context.WithValue(ctx, callerKey{}, callerResult{c, err})
}

func callerFrom(ctx context.Context) (Caller, error) {
	r, ok := ctx.Value(callerKey{}).(callerResult)
	if !ok {
		return Caller{}, errors.New("no peer credentials for this connection")
	}
	return r.c, r.err
}

// PeerCredentials reads the kernel's record of who connected: uid, gid and
// pid with SO_PEERCRED, the supplementary groups with SO_PEERGROUPS (Linux
// 4.13). Not /proc/<pid>/status: the pid may be gone or reused by then, and
// provd.service's ProtectProc=invisible hides other users' processes.
func PeerCredentials(conn net.Conn) (Caller, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return Caller{}, fmt.Errorf("peer credentials: %T is not a unix socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("peer credentials: %w", err)
	}
	var c Caller
	var opErr error
	cerr := raw.Control(func(fd uintptr) {
		uc, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", err)
			return
		}
		c = Caller{PID: int(uc.Pid), UID: int(uc.Uid), GID: int(uc.Gid)}
		c.Groups, opErr = peerGroups(int(fd))
	})
	if cerr != nil {
		return Caller{}, fmt.Errorf("peer credentials: %w", cerr)
	}
	if opErr != nil {
		return Caller{}, fmt.Errorf("peer credentials: %w", opErr)
	}
	return c, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// ERANGE (it then reports the size it needs).
func peerGroups(fd int) ([]int, error) {
	n := 64
	for range 4 {
		buf := make([]uint32, n)
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch errno {
		case 0:
			groups := make([]int, 0, size/4)
			for _, g := range buf[:size/4] {
				groups = append(groups, int(g))
			}
			return groups, nil
		case unix.ERANGE:
			n = int(size/4) + 1
			continue
		default:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		}
	}
	return nil, errors.New("SO_PEERGROUPS: group list keeps growing")
}
