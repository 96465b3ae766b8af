package agent

// The thirtieth review: review 29's mend (srkEvictionOwed reads the records
// as they will stand in the trail, pending then live log, newest first).
//
// FLAW (fails on this code): TestReview30ReanchorArchivingATornLogForgetsTheEviction.
//
// HELD: TestReview30TornTailAfterTheLateRecordKeepsTheEviction.

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/tpm"
)

// review30TearLog appends a torn record (bytes without a newline) to dir's
// log: a crash in the middle of an append.
func review30TearLog(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, audit.FileName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"seq":99,"op":"ke`); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// FLAW (fails on this code): TestReview30ReanchorArchivingATornLogForgetsTheEviction
// (no attacker: one TPM fault, then a crash tearing the log's last line,
// then the officer's documented way out).
//
// Attack: review29LateRecordMount (zeroize --srk's record, srk_evicted
// true, written late into the live log by a zeroize again that then failed
// past its start record; the keys destroyed, the SRK created again by the
// move, the eviction owed, nothing waiting). A crash tears the log's last
// line. The officer runs audit reanchor, which archives a torn log as
// evidence and begins the trail anew (its first record names the archive).
// Later the officer runs zeroize without --srk.
//
// Expected: the doc's rule, "the SRK eviction a zeroize owes is carried
// until a zeroize evicts it or a provision makes the SRK the new PK's":
// neither happened, so zeroize evicts the SRK (srk_because) and none is at
// 0x81000001 at the end, as the trail's zeroize --srk record says.
//
// Observed: srkEvictionOwed reads only the live log and the pending file;
// the late zeroize --srk record is now in the archive, the debt vanishes,
// and zeroize without --srk leaves the SRK the move created again, with no
// record saying it came back.
//
// Mend: a trail begun anew must carry the debt: the move that archives a
// log (audit reanchor, or a move made again that archives) records the
// owed eviction in its record (srkEvictionOwed then reads it, as a
// zeroize's srk_evicted true), or srkEvictionOwed follows the new trail's
// first record to the archive it names.
func TestReview30ReanchorArchivingATornLogForgetsTheEviction(t *testing.T) {
	ctx := context.Background()
	env, _, dir := review29LateRecordMount(t)
	review30TearLog(t, dir)
	r := review8Agent(t, env.TPM, dir)
	res, err := r.AuditReanchor(ctx)
	if err != nil {
		t.Fatalf("not mounted: the officer's reanchor of a torn log: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("reanchor: archived %q, found %q; SRK there %v", res.ArchivedLog, res.Found, review26SRKThere(env))
	if res.ArchivedLog == "" || !review26SRKThere(env) {
		t.Fatalf("not mounted: the torn log was not archived (or the SRK is not there)")
	}
	owed := (&Agent{dir: dir}).srkEvictionOwed()
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("the SRK zeroize --srk evicted is at 0x%08x after the last zeroize: the officer's reanchor archived the log holding the owed eviction's record, and it was forgotten (srkEvictionOwed %v)",
			uint32(tpm.SRKHandle), owed)
	}
}

// HELD: TestReview30TornTailAfterTheLateRecordKeepsTheEviction (a crash
// tearing the log's last line after review 28's fault).
//
// Attack: review29LateRecordMount, then a torn tail on the log: does
// srkEvictionOwed (which drops audit.ReadRecords' error) lose the live
// log's records, and does the way out (zeroize, or audit repair then
// zeroize) forget the eviction?
//
// Held: ReadRecords returns the lines before the torn tail, the debt
// stands, and zeroize without --srk (after audit repair, when refused)
// evicts the SRK.
func TestReview30TornTailAfterTheLateRecordKeepsTheEviction(t *testing.T) {
	ctx := context.Background()
	env, _, dir := review29LateRecordMount(t)
	review30TearLog(t, dir)
	if !(&Agent{dir: dir}).srkEvictionOwed() {
		t.Errorf("a torn tail on the live log ended the eviction the late zeroize --srk record owes")
	}
	z := review8Agent(t, env.TPM, dir)
	zres, zerr := z.Zeroize(ctx, api.ZeroizeOptions{})
	t.Logf("zeroize without --srk over a torn tail: %v (srk_evicted %v)", zerr, zres.SRKEvicted)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if zerr != nil {
		rp := review8Agent(t, env.TPM, dir)
		_, rerr := rp.AuditRepair(ctx, false)
		t.Logf("audit repair: %v", rerr)
		if err := rp.Close(); err != nil {
			t.Fatal(err)
		}
		if zeroizeWithoutSRK(t, env, dir) {
			t.Errorf("after audit repair, zeroize without --srk left the SRK back")
		}
		return
	}
	if review26SRKThere(env) {
		t.Errorf("zeroize without --srk over a torn tail left the SRK back")
	}
}
