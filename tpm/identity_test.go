package tpm_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The high-range template H-3 that provd creates a P-384 EK from, where none
// is persistent, makes the key swtpm_setup made persistent at 0x81010016:
// same name, so same attributes, authPolicy, parameters and key (the
// unique field it starts from included). go-tpm ships no such template;
// its constants are checked here, not trusted.
func TestECCP384EKTemplate(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	persistent, err := env.TPM.ReadPublic(tpm.ECCP384EKHandle)
	if err != nil {
		t.Fatal(err)
	}
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm.ECCP384EKTemplate)}).Execute(env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.TPM.Flush(rsp.ObjectHandle); err != nil {
		t.Fatal(err)
	}
	if string(rsp.Name.Buffer) != string(persistent.Name.Buffer) {
		pub, _ := rsp.OutPublic.Contents()
		t.Fatalf("the H-3 template gives %x\n%x\nswtpm's persistent EK is %x\n%x",
			rsp.Name.Buffer, tpm2.Marshal(pub), persistent.Name.Buffer, tpm2.Marshal(persistent.Public))
	}
}
