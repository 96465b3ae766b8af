package agent

// Review 42: evictSRKUnowed's witness (6f609ae): the SRK an operation
// persisted again for its PK, in a state another program wiped meanwhile,
// is evicted in a tpm.Witness salted to the pinned SRK.
//
// The scenario (review42Unowned): a provisioned state whose SRK another
// program evicted; O (one-shot or daemon) creates a key, the PK loads from
// its blob and srkAgain persists the SRK again (PersistMissingSRK); before
// the key's TPM2_Create another program's zeroize WITHOUT --srk wipes the
// state and leaves 0x81000001 as it is (the SRK O put back). O's commit is
// refused (not_provisioned), and its unlock finds the SRK it persisted in a
// wiped state: ReadPublic, then the witness (StartAuthSession salted to the
// pinned SRK), TPM2_EvictControl in it, the witness's GetCapability
// read-back and its flush.
//
// HELD: TestReview42WitnessEvictionLeavesNothing.
// Attack: the scenario above, one-shot and daemon, on swtpm as /dev/tpm0
// (sweep) and behind a resource manager under swtpmtest.SessionLimit (no
// sweep, three sessions per connection; the daemon's kept sessions beside
// the witness). Checked: the SRK O persisted is evicted (in the witness:
// a StartAuthSession and an EvictControl after the ReadPublic), no session
// or transient object is left that O does not hold, no command was refused
// for want of a slot, and O's next provision, key create and sign work.
// Held in all four.
//
// HELD: TestReview42SRKGoneBeforeTheWitness.
// Attack (another program, no bus attacker): between the unlock's
// ReadPublic of 0x81000001 and the witness's StartAuthSession another
// program (not provd: the unlock holds the store's lock, which a provd
// zeroize would wait for) evicts the SRK ("gone"), or evicts it and persists an ECC storage
// key of its own there ("foreign-ecc": an ECC salt decrypts to *something*
// in any ECC key, so the StartAuthSession is not refused as an RSA one is).
// The StartAuthSession meets TPM_RC_HANDLE (gone): srkAgain makes a
// transient copy of the SRK (PersistMissingSRK is off by then) and the
// witness is salted to it; can the copy, or the witness, be left behind,
// can the foreign key be evicted? Expected: nothing left loaded that O
// does not hold, the copy flushed (Witness.EvictSRK's dropCopy), the
// foreign key still there, O's next operations work. Held: the copy is
// flushed in the witness's EvictSRK, the foreign ECC key's eviction is
// refused by the TPM (the witness's command HMAC names the pinned SRK, and
// its salt is not the foreign key's), the witness is flushed on every
// path, both modes, with and without the resource manager.
//
// HELD (recovery): TestReview42WitnessFlushDropped.
// Attack (A1 on the bus): A1 drops the witness's TPM2_FlushContext and
// answers success (a flush's answer has no HMAC): the witness session
// stays loaded, held by nobody, and provd's session count is one short.
// Expected, as TestDroppedSessionFlushNeedsNoFourthSession asks of every
// other flush: no later operation of O's meets the session limit or fails.
// Held: the next provision, key create, sign, seal and unseal work and
// none is refused for want of a slot (SessionLimit counts 0), one-shot and
// daemon. (The leaked session itself is A1's doing and stays loaded on
// /dev/tpm0 until O's next sweep: logged, not failed; A1 on the bus can
// start sessions of its own anyway.)
//
// HELD: TestReview42WitnessFailureKeepsTheResult.
// Attack (A1 on the bus): turn a successful operation's result into an
// error through the witness: a sign (records nothing) that ran into
// evictSRKUnowed, A1 answering the witness's StartAuthSession, its
// EvictControl, or the first GetCapability after the unlock's read with
// TPM_RC_FAILURE, or the EvictControl with a forged success. Held: the
// signature is returned, nothing is left loaded, the next operations
// work; the SRK stays at 0x81000001 where the eviction failed (logged,
// as documented: the next zeroize --srk evicts it), and the forged
// success is caught by the witness's read-back. By reasoning, a bus
// interposer cannot make the witness evict anything but the pinned SRK
// (the command HMAC binds its name), nor make evictSRKUnowed run in a
// provisioned state (it reads the state under the store's lock;
// TestReview40ForgedEmptySRKDoesNotEvictInAProvisionedState); with the
// owner's empty authorization A1 can evict 0x81000001 itself anyway.
import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review42Unowned runs the scenario (file header) in s and returns the key
// create's error. after, when not nil, sees every command from the wipe on
// (the unlock's evictSRKUnowed among them).
func review42Unowned(t *testing.T, s *review32Steps, after swtpmtest.Hook) error {
	t.Helper()
	s.a.pk = nil // the PK loads from its blob, under the SRK
	review31EvictSRK(t, s.env, s.b)
	loads, wiped := 0, false
	s.b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if wiped {
			if after != nil {
				return after(next, cmd)
			}
			return nil, nil, false
		}
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCLoad:
			loads++
		case tpm2.TPMCCCreate:
			if loads == 0 {
				return nil, nil, false
			}
			wiped = true
			if _, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(next); err != nil {
				t.Errorf("not mounted: the PK's load did not persist the SRK again")
			}
			review40Wipe(t, s.dir, next, false) // zeroize without --srk
		}
		return nil, nil, false
	})
	_, err := s.a.CreateKey(context.Background(), review41KeyReq("k"))
	s.b.Set(nil)
	if !wiped {
		t.Fatalf("not mounted: no TPM2_Create after a TPM2_Load (%v)", err)
	}
	t.Logf("key create across a zeroize without --srk: %v (exit %d)", err, api.ExitCode(err))
	if !errors.Is(err, api.ErrNotProvisioned) {
		t.Errorf("want not_provisioned: %v", err)
	}
	return err
}

// review42Leftovers fails t when a transient object (review32Unheld) or a
// session is loaded that a does not hold.
func review42Leftovers(t *testing.T, env *swtpmtest.Env, a *Agent, after string) {
	t.Helper()
	review32Unheld(t, env, a, after)
	held := a.heldHandles()
	for _, first := range []tpm2.TPMHandle{tpm.HMACSessions, tpm.PolicySessions} {
		hs, err := env.TPM.Handles(first)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs {
			if !slices.Contains(held, h) {
				t.Errorf("after %s: session 0x%08x left, held by nobody (held: %x)", after, uint32(h), held)
			}
		}
	}
}

// review42Next is O's next operations in a wiped state: provision again,
// a key create and a sign.
func review42Next(t *testing.T, a *Agent) {
	t.Helper()
	ctx := context.Background()
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Errorf("the next provision: %v", err)
		return
	}
	if _, err := a.CreateKey(ctx, review41KeyReq("k2")); err != nil {
		t.Errorf("the next key create: %v", err)
		return
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := a.Sign(ctx, "k2", d[:], api.SignOptions{}); err != nil {
		t.Errorf("the next sign: %v", err)
	}
}

func review42Modes(t *testing.T, fn func(t *testing.T, daemon, rm bool)) {
	for _, daemon := range []bool{false, true} {
		for _, rm := range []bool{false, true} {
			name := review26Mode(daemon) + "/tpm0"
			if rm {
				name = review26Mode(daemon) + "/tpmrm0"
			}
			t.Run(name, func(t *testing.T) { fn(t, daemon, rm) })
		}
	}
}

func review42Mount(t *testing.T, daemon, rm bool) (*review32Steps, *swtpmtest.SessionLimit) {
	t.Helper()
	l := &swtpmtest.SessionLimit{}
	opts := []swtpmtest.Option{swtpmtest.WithWrap(l.Wrap)}
	if rm {
		opts = append(opts, swtpmtest.WithResourceManager())
	}
	s := review32Mount(t, daemon, opts...)
	if daemon {
		// Warm: kept PK context, shared and policy sessions, "w" resident.
		ctx := context.Background()
		if _, err := s.a.CreateKey(ctx, review41KeyReq("w")); err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("m"))
		if _, err := s.a.Sign(ctx, "w", d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	l.Take()
	return s, l
}

// review42IsSRKRead reports whether cmd is TPM2_ReadPublic of 0x81000001.
func review42IsSRKRead(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic && len(cmd) >= 14 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle
}

func TestReview42WitnessEvictionLeavesNothing(t *testing.T) {
	t.Parallel()
	review42Modes(t, func(t *testing.T, daemon, rm bool) {
		s, l := review42Mount(t, daemon, rm)
		log := &swtpmtest.CommandLog{}
		log.Start()
		review42Unowned(t, s, log.Hook)
		cmds := log.Stop()
		refused, _ := l.Take()
		t.Logf("commands from the wipe on: %v; refused for want of a slot: %d", cmds, refused)
		if review26SRKThere(s.env) {
			t.Errorf("the SRK O persisted stays at 0x81000001 in the wiped state")
		}
		i := slices.Index(cmds, tpm2.TPMCCReadPublic)
		if i < 0 || !slices.Contains(cmds[i:], tpm2.TPMCCStartAuthSession) || !slices.Contains(cmds[i:], tpm2.TPMCCEvictControl) {
			t.Errorf("not mounted: no witness eviction in the unlock: %v", cmds)
		}
		if refused != 0 {
			t.Errorf("%d commands refused for want of a slot", refused)
		}
		review42Leftovers(t, s.env, s.a, "the witness's eviction")
		l.Take()
		review42Next(t, s.a)
		if refused, cmds := l.Take(); refused != 0 {
			t.Errorf("the next operations: %d commands refused for want of a slot: %v", refused, cmds)
		}
		review42Leftovers(t, s.env, s.a, "the next operations")
	})
}

func TestReview42SRKGoneBeforeTheWitness(t *testing.T) {
	t.Parallel()
	for _, foreign := range []bool{false, true} {
		name := "gone"
		if foreign {
			name = "foreign-ecc"
		}
		t.Run(name, func(t *testing.T) {
			review42Modes(t, func(t *testing.T, daemon, rm bool) {
				s, l := review42Mount(t, daemon, rm)
				read, fired := false, false
				var foreignName []byte
				hook := func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if fired {
						return nil, nil, false
					}
					if review42IsSRKRead(cmd) {
						read = true
						return nil, nil, false
					}
					if !read || swtpmtest.CommandCode(cmd) != tpm2.TPMCCStartAuthSession {
						return nil, nil, false
					}
					fired = true
					// Another program (not provd: the store's lock, which
					// the unlock holds, does not stop it) evicts the SRK.
					rp, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(next)
					if err != nil {
						t.Errorf("not mounted: 0x81000001 empty at the witness's start: %v", err)
						return nil, nil, false
					}
					if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: tpm.SRKHandle, Name: rp.Name}, PersistentHandle: tpm.SRKHandle}).Execute(next); err != nil {
						t.Errorf("the other program's eviction: %v", err)
					}
					if !foreign {
						return nil, nil, false
					}
					tmpl := tpm2.ECCSRKTemplate
					tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
						X: tpm2.TPM2BECCParameter{Buffer: []byte("another program's storage key")},
						Y: tpm2.TPM2BECCParameter{Buffer: []byte("another program's storage key")}})
					cp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}).Execute(next)
					if err != nil {
						t.Errorf("the other program's primary: %v", err)
						return nil, nil, false
					}
					if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name}, PersistentHandle: tpm.SRKHandle}).Execute(next); err != nil {
						t.Errorf("the other program's persist: %v", err)
					}
					if _, err := (tpm2.FlushContext{FlushHandle: cp.ObjectHandle}).Execute(next); err != nil {
						t.Errorf("the other program's flush: %v", err)
					}
					foreignName = cp.Name.Buffer
					return nil, nil, false
				}
				log := &swtpmtest.CommandLog{}
				log.Start()
				review42Unowned(t, s, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					log.Hook(next, cmd)
					return hook(next, cmd)
				})
				cmds := log.Stop()
				refused, _ := l.Take()
				if !fired {
					t.Fatalf("not mounted: no StartAuthSession after the unlock's ReadPublic: %v", cmds)
				}
				t.Logf("commands from the wipe on: %v; refused: %d", cmds, refused)
				got := review41SRKName(s.env)
				switch {
				case foreign && string(got) != string(foreignName):
					t.Errorf("the other program's ECC key at 0x81000001 was evicted (0x81000001 holds %x)", got)
				case !foreign && got != nil:
					t.Errorf("0x81000001 holds %x after the other program's zeroize --srk", got)
				}
				review42Leftovers(t, s.env, s.a, "the witness with the SRK gone before its session")
				if foreign {
					// The other program's key goes, as it would.
					if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: tpm.SRKHandle, Name: tpm2.TPM2BName{Buffer: foreignName}}, PersistentHandle: tpm.SRKHandle}).Execute(s.b.Next); err != nil {
						t.Fatal(err)
					}
				}
				l.Take()
				review42Next(t, s.a)
				if refused, cmds := l.Take(); refused != 0 {
					t.Errorf("the next operations: %d commands refused for want of a slot: %v", refused, cmds)
				}
				review42Leftovers(t, s.env, s.a, "the next operations")
			})
		})
	}
}

func TestReview42WitnessFlushDropped(t *testing.T) {
	t.Parallel()
	review42Modes(t, func(t *testing.T, daemon, rm bool) {
		s, l := review42Mount(t, daemon, rm)
		s.env.NoLeakCheck() // A1's leftover is flushed by hand
		read, witness := false, tpm2.TPMHandle(0)
		var kept tpm2.TPMHandle
		review42Unowned(t, s, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			switch {
			case kept != 0:
			case review42IsSRKRead(cmd):
				read = true
			case read && witness == 0 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession:
				rsp, err := next.Send(cmd)
				if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
					witness = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
				}
				return rsp, err, true
			case witness != 0 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCFlushContext && len(cmd) >= 14 &&
				tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == witness:
				kept = witness
				return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
			}
			return nil, nil, false
		})
		if kept == 0 {
			t.Fatalf("not mounted: the witness's flush was not seen (witness 0x%08x)", uint32(witness))
		}
		refused, _ := l.Take()
		hs, _ := s.env.TPM.Handles(tpm.HMACSessions)
		t.Logf("witness 0x%08x's flush dropped; sessions loaded now %x; refused %d", uint32(kept), hs, refused)
		l.Take()
		ctx := context.Background()
		review42Next(t, s.a)
		sealed, err := s.a.Seal(ctx, api.SealRequest{Data: []byte("s")})
		if err != nil {
			t.Errorf("the next seal: %v", err)
		} else if _, err := s.a.Unseal(ctx, sealed); err != nil {
			t.Errorf("the next unseal: %v", err)
		}
		if refused, cmds := l.Take(); refused != 0 {
			t.Errorf("after the witness's dropped flush: %d commands refused for want of a slot: %v", refused, cmds)
		}
		hs, _ = s.env.TPM.Handles(tpm.HMACSessions)
		t.Logf("after the next operations: sessions loaded %x (A1's kept witness 0x%08x still there: %v)", hs, uint32(kept), slices.Contains(hs, kept))
		_, _ = (tpm2.FlushContext{FlushHandle: kept}).Execute(s.b.Next)
	})
}

// HELD: TestReview42WitnessFailureKeepsTheResult.
// Attack (A1 on the bus, other programs as in review42Unowned): an
// operation that records nothing and succeeds runs into evictSRKUnowed: a
// sign whose PK loads from its blob with the SRK evicted (persisted again
// for the load), the state wiped without --srk before the TPM2_Sign. A1
// then answers the witness's StartAuthSession, its TPM2_EvictControl or
// its read-back TPM2_GetCapability with an error (TPM_RC_FAILURE, or a
// forged success for the eviction). Expected: the sign's result stands (a
// signature that verifies), nothing is left loaded, the next operations
// work. Held in every case, one-shot and daemon (evictSRKUnowed only logs).
func TestReview42WitnessFailureKeepsTheResult(t *testing.T) {
	t.Parallel()
	names := map[tpm2.TPMCC]string{tpm2.TPMCCStartAuthSession: "StartAuthSession", tpm2.TPMCCEvictControl: "EvictControl", tpm2.TPMCCGetCapability: "GetCapability"}
	for _, target := range []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCEvictControl, tpm2.TPMCCGetCapability} {
		for _, forgeOK := range []bool{false, true} {
			if forgeOK && target != tpm2.TPMCCEvictControl {
				continue
			}
			name := names[target]
			if forgeOK {
				name += "-forged-success"
			}
			t.Run(name, func(t *testing.T) {
				for _, daemon := range []bool{false, true} {
					t.Run(review26Mode(daemon), func(t *testing.T) {
						ctx := context.Background()
						s := review32Mount(t, daemon)
						if _, err := s.a.CreateKey(ctx, review41KeyReq("w")); err != nil {
							t.Fatal(err)
						}
						s.a.pk = nil
						review31EvictSRK(t, s.env, s.b)
						wiped, read, hit := false, false, false
						s.b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
							cc := swtpmtest.CommandCode(cmd)
							switch {
							case !wiped && cc == tpm2.TPMCCSign:
								wiped = true
								review40Wipe(t, s.dir, next, false)
							case wiped && review42IsSRKRead(cmd):
								read = true
							case read && !hit && cc == target:
								hit = true
								if forgeOK {
									return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
								}
								return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
							}
							return nil, nil, false
						})
						d := sha256.Sum256([]byte("m"))
						sig, err := s.a.Sign(ctx, "w", d[:], api.SignOptions{})
						s.b.Set(nil)
						if !wiped || !hit {
							t.Fatalf("not mounted: wiped %v, witness command hit %v (%v)", wiped, hit, err)
						}
						t.Logf("sign with the witness's %s answered by A1: %v; SRK there %v", name, err, review26SRKThere(s.env))
						if err != nil || len(sig) == 0 {
							t.Errorf("the sign's result turned into an error by the witness's failure: %v", err)
						}
						review42Leftovers(t, s.env, s.a, "the sign")
						review42Next(t, s.a)
						review42Leftovers(t, s.env, s.a, "the next operations")
					})
				}
			})
		}
	}
}
