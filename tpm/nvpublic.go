package tpm

import "github.com/google/go-tpm/tpm2"

// nvPublic is the public area of the NV indices provd defines: owner-defined,
// empty password for reading and writing (so PolicyNV can read it and provd
// write it without a secret), readable by the owner too, no DA counting.
func nvPublic(h tpm2.TPMHandle, nt tpm2.TPMNT, size uint16) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:        nt,
			AuthWrite: true,
			AuthRead:  true,
			OwnerRead: true,
			NoDA:      true,
		},
		DataSize: size,
	}
}

// CounterPublic is the public area of an ungated counter at h once written
// (TPMA_NV_WRITTEN set, as after DefineCounter): provd's policy counter before
// gates. provd's counter is now GatedCounterPublic's, whose name signed
// policies bind to.
func CounterPublic(h tpm2.TPMHandle) tpm2.TPMSNVPublic {
	p := nvPublic(h, tpm2.TPMNTCounter, counterSize)
	p.Attributes.Written = true
	return p
}
