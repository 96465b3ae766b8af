# provd: two commands on a fresh Debian machine: `make demo` and `make test`.
# Both install the system packages they need (apt-get, as root) and fail loudly
# when they cannot.
SHELL := /bin/bash

GO        ?= go
BIN       := bin/provd
# provd-fleet: provd with the fleet endpoint linked in; provd hands it
# `fleet serve` and `man` (cmd/provd-fleet).
FLEET_BIN := bin/provd-fleet
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)
PREFIX    ?= /usr
# Packages the tests and the demo drive: the simulator, its manufacturing
# tools, tpm2-tools and openssl as independent interop checkers, systemd's
# tools for the unit checks and socket activation, SoftHSM2 as another HSM for
# key backups (its PKCS#11 client in the test needs cgo: gcc), PostgreSQL for the
# fleet store's conformance suite (test/pgtest starts its own server), Chromium
# and ChromeDriver for the operators' page in a real headless browser.
DEB_PKGS  := swtpm swtpm-tools tpm2-tools openssl systemd softhsm2 gcc libc6-dev postgresql chromium chromium-driver
# One binary each package above must provide.
DEB_BINS  := swtpm swtpm_setup swtpm_ioctl tpm2_getcap openssl systemd-analyze systemd-socket-activate softhsm2-util gcc pg_ctlcluster chromedriver
# Packages with concurrency run under the race detector.
RACE_PKGS := ./tpm/... ./agent/... ./store/... ./audit/... ./systemd/... ./cmd/...
TEST_TIMEOUT ?= 14m
# Tests marked parallel run this many at a time. The TPM tests that take
# longest mostly wait (a policy session's lifetime slept out, backoffs,
# child processes killed and reaped): the agent package used half a core
# of two run one test at a time, 534 s; four at a time, 231 s.
TEST_PARALLEL ?= 4

# The VM test bed (make vm-test): debootstrap, qemu, OVMF, swtpm and the
# tools that build the disk image.
VM_PKGS   := qemu-system-x86 ovmf debootstrap swtpm swtpm-tools e2fsprogs openssl
VM_BINS   := qemu-system-x86_64 debootstrap swtpm swtpm_setup swtpm_localca mkfs.ext4 openssl /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd

.PHONY: all build test demo bench lint vulncheck reliability man install deps vm-deps vm-test fuzz clean

all: build

# Static binaries (no cgo): no dynamic loader or libc at each start, which a
# one-shot command pays every time; os/user then reads /etc/passwd and
# /etc/group itself (systemd-sysusers writes provd's group there).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/provd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(FLEET_BIN) ./cmd/provd-fleet

deps:
	@scripts/deps.sh $(DEB_PKGS) -- $(DEB_BINS)

test: deps
	$(GO) vet ./...
	$(GO) test -timeout $(TEST_TIMEOUT) -parallel $(TEST_PARALLEL) -race $(RACE_PKGS)
	$(GO) test -timeout $(TEST_TIMEOUT) -parallel $(TEST_PARALLEL) $$($(GO) list ./... | grep -vxF "$$($(GO) list $(RACE_PKGS))")

demo: deps build
	@scripts/demo.sh $(BIN)

# A long run, not part of make test: provd under systemd in a UEFI VM with a
# swtpm as its TPM, five boots (README.md, "make vm-test"). As root.
vm-deps:
	@scripts/deps.sh $(VM_PKGS) -- $(VM_BINS)

vm-test: vm-deps build
	@test/vm/vm-test.sh $(BIN)

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(GO) run ./test/benchdriver -provd $(BIN) -runs 10 -hardware-runs 5 -update docs/benchmarks.md

# Each fuzz target for a short while; FUZZTIME=5m for a longer hunt.
FUZZTIME ?= 20s
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	@scripts/vulncheck.sh

# The long form of the reliability instruments (make test runs a short one):
# kill -9, and TPM power cuts, at random moments of every state-changing
# operation, KILLS times each; TPM power cuts and resets under the daemon,
# KILLS of them; an idle saved session against the TPM's context gap (the
# daemon's rest when idle). The filter keeps the summaries; pipefail keeps
# a failure.
KILLS ?= 200
reliability: deps
	set -o pipefail; PROVD_KILLS=$(KILLS) $(GO) test -count=1 -timeout 60m -v -run '^(TestKillAtAnyMomentLeavesValidState|TestTPMPowerCutAtAnyMomentLeavesValidState)$$' ./agent/ | grep -E 'seed|_test.go:|child|^(---|ok|FAIL)'
	set -o pipefail; PROVD_KILLS=$(KILLS) $(GO) test -count=1 -timeout 30m -v -run '^TestDaemonFaultsDuringOperations$$' ./agent/server/ | grep -E 'seed|faults \(|HTTP [^5]|^(---|ok|FAIL)'
	set -o pipefail; PROVD_CONTEXT_GAP=1 $(GO) test -count=1 -timeout 10m -v -run '^TestIdleSavedSessionStopsOtherSavesAtTheContextGap$$' ./tpm/ | grep -E '_test.go:|^(---|ok|FAIL)'

# Known vulnerabilities in the code paths provd uses (lint runs it too). It
# needs the Go vulnerability database (vuln.go.dev, or GOVULNDB=file:///path
# to a copy): lint warns and goes on without it, this target fails.
vulncheck:
	@STRICT=1 scripts/vulncheck.sh

man: build
	$(BIN) man man/

install: build man
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/provd
	install -D -m 0755 $(FLEET_BIN) $(DESTDIR)$(PREFIX)/bin/provd-fleet
	install -d $(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 0644 man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -m 0644 man/*.7 $(DESTDIR)$(PREFIX)/share/man/man7/
	install -D -m 0644 systemd/provd.service $(DESTDIR)/lib/systemd/system/provd.service
	install -D -m 0644 systemd/provd.socket $(DESTDIR)/lib/systemd/system/provd.socket
	install -D -m 0644 systemd/provd-fw-verify.service $(DESTDIR)/lib/systemd/system/provd-fw-verify.service
	install -D -m 0644 systemd/provd-attest.service $(DESTDIR)/lib/systemd/system/provd-attest.service
	install -D -m 0644 systemd/provd-attest.timer $(DESTDIR)/lib/systemd/system/provd-attest.timer
	install -D -m 0644 systemd/provd.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/provd.conf
	test -e $(DESTDIR)/etc/provd/provd.yaml || install -D -m 0640 systemd/provd.yaml $(DESTDIR)/etc/provd/provd.yaml

clean:
	rm -rf bin man
