// Package policy computes TPM 2.0 policy digests offline and applies the same
// policy expressions to a TPM policy session.
//
// The point of one expression serving both purposes is that the digest baked
// into a key's authPolicy at creation and the commands sent at use can never
// drift apart: a Policy is built once, Digest gives what the TPM will expect,
// and Apply drives a Session (implemented by package tpm) through exactly the
// commands whose hash chain yields that digest. Tests check the two agree with
// Recorder, a software Session.
//
// The package never talks to a TPM. It also holds the PCR golden-value file
// format and signed policies (TPM2_PolicyAuthorize), which let a firmware update
// ship new golden values without re-provisioning keys, and revoke old ones
// through an NV counter checked by the TPM itself.
//
// Approved mode only: SHA-256/SHA-384 banks and session digests, ECDSA P-256 /
// P-384 and RSA-PSS >= 3072 policy signers. Anything else is refused with
// catalog.ErrNotApproved.
package policy
