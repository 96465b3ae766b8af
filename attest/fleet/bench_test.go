package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/pgtest"
)

// The fleet endpoint at scale (issue 14). The devices are software-
// simulated: each has an ECDSA P-256 AK of its own in this process and
// signs TPMS_ATTEST quotes with it, as a TPM would, over its firmware log's
// PCRs; the load is labelled so in docs/benchmarks.md. The endpoint does
// everything it does for a real device: authenticates the nonce, verifies
// the quote's signature, the PCR digest, replays a 64 KiB event log, checks
// the golden values, records the verdict.

// benchDevices is how many devices the store holds (PROVD_BENCH_DEVICES,
// default 1,000; docs/benchmarks.md gives the figures of larger runs);
// PROVD_BENCH_STORES picks the stores (sqlite,postgres).
func benchDevices() int { return benchEnv("PROVD_BENCH_DEVICES", 1000) }

// benchClients is how many clients appraise at once (PROVD_BENCH_CLIENTS,
// default 8): each waits for its verdict, so with few of them the rate is
// bound by one appraisal's latency (SQLite's synced commit) rather than by
// the endpoint's cores.
func benchClients() int { return benchEnv("PROVD_BENCH_CLIENTS", 8) }

func benchEnv(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

type simDevice struct {
	id  string
	key *ecdsa.PrivateKey
	ak  tpm2.TPMTPublic
}

func softAK(k *ecdsa.PrivateKey) tpm2.TPMTPublic {
	ecdh, _ := k.PublicKey.ECDH()
	raw := ecdh.Bytes()
	return tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})}
}

// benchLog is a 64 KiB firmware log on PCRs 0..7 and its replayed values.
func benchLog(b testing.TB) ([]byte, map[int][]byte) {
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 400)
	for i := 0; ; i++ {
		data[0], data[1] = byte(i), byte(i>>8)
		if _, err := l.Append(i%8, attest.EventType(0x80000001), data); err != nil { // EV_EFI_VARIABLE_DRIVER_CONFIG
			b.Fatal(err)
		}
		raw, err := l.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		if len(raw) >= 64<<10 {
			all, err := l.Replay(attest.Options{})
			if err != nil {
				b.Fatal(err)
			}
			vals := map[int][]byte{}
			for i := 0; i <= 7; i++ {
				vals[i] = all[tpm2.TPMAlgSHA256][i]
			}
			return raw, vals
		}
	}
}

// quote is what a TPM's TPM2_Quote over PCRs 0..7 with values vals returns,
// signed by d's AK.
func (d *simDevice) quote(b testing.TB, nonce []byte, vals map[int][]byte) (attestB, sig []byte) {
	h := sha256.New()
	for i := 0; i <= 7; i++ {
		h.Write(vals[i])
	}
	name, err := tpm2.ObjectName(&d.ak)
	if err != nil {
		b.Fatal(err)
	}
	a := tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestQuote, QualifiedSigner: *name,
		ExtraData: tpm2.TPM2BData{Buffer: nonce},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0xff, 0, 0}}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}})}
	attestB = tpm2.Marshal(a)
	digest := sha256.Sum256(attestB)
	r, s, err := ecdsa.Sign(rand.Reader, d.key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	sig = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: pad(r)}, SignatureS: tpm2.TPM2BECCParameter{Buffer: pad(s)}})})
	return attestB, sig
}

func pad(x *big.Int) []byte { return x.FillBytes(make([]byte, 32)) }

// benchFleet enrolls n simulated devices in store url under a class whose
// golden values are the log's replay.
func benchFleet(b testing.TB, url string, n int, vals map[int][]byte) (*fleet.Endpoint, []*simDevice) {
	ctx := context.Background()
	st, err := fleet.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	golden := map[int]string{}
	for i, v := range vals {
		golden[i] = hex.EncodeToString(v)
	}
	if err := st.SetPolicy(ctx, fleet.Policy{Class: "bench", PCRs: map[string]map[int]string{"sha256": golden}, UpdatedAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	// One AK for every device: enrollment is not what is measured, and a
	// quote's verification costs the same whichever key signed it.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	ak := softAK(key)
	secret := sha256.Sum256([]byte("bench"))
	devs := make([]*simDevice, n)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				id := fmt.Sprintf("%064x", i+1)
				d := fleet.Device{ID: id, Class: "bench", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: tpm2.Marshal(ak), SecretHash: secret[:], EnrolledAt: time.Now()}
				if err := st.PutPending(ctx, d); err != nil {
					errs <- err
					return
				}
				if _, err := st.Activate(ctx, id, secret[:], time.Now()); err != nil {
					errs <- err
					return
				}
				devs[i] = &simDevice{id: id, key: key, ak: ak}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return fleet.New(fleet.Config{Store: st}), devs
}

// ceilingWork is the work no appraisal avoids: one ECDSA P-256 quote
// signature verified and SHA-256 over a 64 KiB event log.
type ceilingWork struct {
	raw, q []byte
	pub    *ecdsa.PublicKey
	r, s   *big.Int
}

func newCeilingWork(b testing.TB) *ceilingWork {
	raw, vals := benchLog(b)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	d := &simDevice{key: key, ak: softAK(key)}
	q, _ := d.quote(b, make([]byte, 41), vals)
	digest := sha256.Sum256(q)
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	return &ceilingWork{raw: raw, q: q, pub: &key.PublicKey, r: r, s: s}
}

func (c *ceilingWork) do() bool {
	dq := sha256.Sum256(c.q)
	ok := ecdsa.Verify(c.pub, dq[:], c.r, c.s)
	sha256.Sum256(c.raw)
	return ok
}

// rate is the ceiling on every core the benchmark has (GOMAXPROCS
// goroutines), over d: measured beside each store's run, so that the ratio
// compares figures taken under the same conditions.
func (c *ceilingWork) rate(d time.Duration) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				for range 16 {
					c.do()
				}
				n.Add(16)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// BenchmarkAppraisalCeiling is ceilingWork on one core.
func BenchmarkAppraisalCeiling(b *testing.B) {
	c := newCeilingWork(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !c.do() {
			b.Fatal("verify")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ceiling/s")
}

// BenchmarkAttest appraises simulated devices' evidence on SQLite and on
// PostgreSQL, from 8 concurrent clients (benchClients): attestations per
// second, the 99th-percentile latency, the ratio to the ceiling on all
// cores measured just before and just after (their mean), and the cores
// the endpoint's process used meanwhile.
func BenchmarkAttest(b *testing.B) {
	raw, vals := benchLog(b)
	c := newCeilingWork(b)
	n := benchDevices()
	stores := []string{"sqlite", "postgres"}
	if v := os.Getenv("PROVD_BENCH_STORES"); v != "" {
		stores = strings.Split(v, ",")
	}
	for _, db := range stores {
		// The fleet once per store, not per b.N (a million devices take
		// minutes to enroll).
		url := "sqlite://" + filepath.Join(b.TempDir(), "fleet.db")
		if db == "postgres" {
			url = pgtest.Start(b).URL
		}
		start := time.Now()
		e, devs := benchFleet(b, url, n, vals)
		enrolled := time.Since(start)
		b.Run(db, func(b *testing.B) {
			ctx := context.Background()
			// Evidence first (the devices' part), then the endpoint's.
			reqs := make([]fleetapi.AttestRequest, b.N)
			for i := range reqs {
				d := devs[i%len(devs)]
				ch, err := e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: d.id})
				if err != nil {
					b.Fatal(err)
				}
				q, sig := d.quote(b, ch.Nonce, vals)
				pcrs := map[string]string{}
				for j, v := range vals {
					pcrs[strconv.Itoa(j)] = hex.EncodeToString(v)
				}
				reqs[i] = fleetapi.AttestRequest{DeviceID: d.id, Nonce: ch.Nonce, Quote: q, Signature: sig,
					PCRs: map[string]map[string]string{"sha256": pcrs}, FirmwareLog: raw}
			}
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var failed atomic.Int64
			var why atomic.Value
			before := c.rate(time.Second)
			clients := benchClients()
			stopProfile := benchProfile(b, db)
			cpu := processCPU()
			b.ResetTimer()
			// Exactly clients goroutines (RunParallel would start a
			// multiple of GOMAXPROCS), taking the requests in turn.
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						start := time.Now()
						v, err := e.Attest(ctx, reqs[i])
						lat[i] = time.Since(start)
						if err != nil || !v.Pass {
							failed.Add(1)
							why.Store(fmt.Sprintf("%v %v", v.Reasons, err))
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			cpu = processCPU() - cpu
			stopProfile()
			if failed.Load() > 0 {
				b.Fatalf("%d of %d simulated attestations did not pass: %v", failed.Load(), b.N, why.Load())
			}
			ceiling := (before + c.rate(time.Second)) / 2
			slices.Sort(lat)
			rate := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(rate, "attest/s")
			b.ReportMetric(ceiling, "ceiling/s")
			b.ReportMetric(rate/ceiling, "ratio")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			// The endpoint's cores: under 2 (the machine's) while the
			// appraisals wait on something other than this process's CPU
			// (a sync, a lock, the database server).
			b.ReportMetric(cpu.Seconds()/b.Elapsed().Seconds(), "endpoint-cores")
			b.ReportMetric(float64(n), "devices")
			b.ReportMetric(float64(clients), "clients")
			b.ReportMetric(float64(n)/enrolled.Seconds(), "enrolled/s")
		})
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchProfile writes a CPU profile of the timed appraisals alone to
// $PROVD_BENCH_CPUPROFILE.<store> when that is set (go test's -cpuprofile
// covers the enrollment, the evidence and the ceiling too); the returned
// function stops it.
func benchProfile(b *testing.B, store string) func() {
	base := os.Getenv("PROVD_BENCH_CPUPROFILE")
	if base == "" {
		return func() {}
	}
	f, err := os.Create(base + "." + store)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		b.Fatalf("PROVD_BENCH_CPUPROFILE: %v (not with go test -cpuprofile, which profiles the whole run)", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
