package cli

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/provd/provd/firmware"
)

func (a *app) fwCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "fw",
		Short: "Firmware authentication: signed manifests of firmware images (docs/firmware.md)",
		Long: `The firmware signer signs, offline, a manifest of the firmware images: each
image's name, size and SHA-256 or SHA-384 digest, a monotonic version and a device
class (provd fw sign). The crypto officer anchors the signer in the TPM (provd fw
anchor set); at boot, provd fw verify authenticates the images against the
manifest with that signer and the anti-rollback counter, and measures the verdict
into a PCR and <state-dir>/measurements.log (provd fw log --replay)
(docs/firmware.md).`,
	}
	manifest := &cobra.Command{Use: "manifest", Short: "Read firmware manifests"}
	manifest.AddCommand(a.fwManifestShowCmd())
	c.AddCommand(a.fwSignCmd(), manifest, a.fwAnchorCmd(), a.fwVerifyCmd(), a.fwLogCmd())
	return c
}

func (a *app) fwSignCmd() *cobra.Command {
	var keyFile, images, class, hash, out string
	var version uint64
	c := &cobra.Command{
		Use:   "sign --key signer.pem --images DIR --version N --class C [--hash sha256|sha384] --out fw.manifest",
		Short: "Sign a manifest of the firmware images under DIR (offline, the firmware signer)",
		Long: `Hash every regular file under --images (recursively; names are paths relative to
it, of [A-Za-z0-9._-] components) and sign the manifest: the images, --version (a
monotonic release number: devices refuse one below their anti-rollback counter)
and --class (the device class it is for). Offline: no TPM, no state.

The signer's key (PEM: ECDSA P-256/P-384, or RSA 3072/4096 signing with
RSASSA-PSS) signs SHA-256 of "provd firmware manifest v1\0" and the manifest's
bytes, so no other signature by the same key reads as a manifest. The file holds
the signed bytes, the signer's public key and the signature (docs/formats.md).`,
		Example: `  provd fw sign --key fw-signer.pem --images build/images --version 42 --class gateway --out fw.manifest`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" || images == "" || class == "" || out == "" || !cmd.Flags().Changed("version") {
				return usageError(errors.New("--key, --images, --version, --class and --out are required"))
			}
			signer, err := readSigner(keyFile)
			if err != nil {
				return err
			}
			list, err := firmware.HashImages(images, hash)
			if err != nil {
				return usageError(err)
			}
			b, err := firmware.Sign(signer, firmware.Manifest{Class: class, Version: version, Images: list})
			if err != nil {
				return err
			}
			s, err := firmware.Parse(b)
			if err != nil {
				return err
			}
			res := map[string]any{"out": out, "version": version, "class": class, "images": len(list),
				"manifest_sha256": hex.EncodeToString(s.Digest()), "signer": hex.EncodeToString(s.SignerName)}
			return a.writeReport(out, append(b, '\n'), 0o644, res, func(w io.Writer) {
				fmt.Fprintf(w, "signed %d images, version %d, class %s: %s\nmanifest sha256 %x, signer %x\n", len(list), version, class, out, s.Digest(), s.SignerName)
			})
		},
	}
	c.Flags().StringVar(&keyFile, "key", "", "the firmware signer's private key (PEM)")
	c.Flags().StringVar(&images, "images", "", "the directory of the images")
	c.Flags().Uint64Var(&version, "version", 0, "the release's version (monotonic)")
	c.Flags().StringVar(&class, "class", "", "the device class (1-23 of a-z, 0-9, '.', '_', '-')")
	c.Flags().StringVar(&hash, "hash", "sha256", "the images' digest: sha256 or sha384")
	c.Flags().StringVar(&out, "out", "", "where to write the manifest (- for stdout)")
	return c
}

func (a *app) fwManifestShowCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "show FILE",
		Short: "Show a firmware manifest, its signature checked against the key it carries",
		Long: `Print a manifest's version, class, images and signer. The file is read strictly
and its signature checked against the public key it carries (exit 17 when it does
not verify): that says the file is intact, not that its signer is trusted, which
is the anchor's say at boot.`,
		Example: `  provd fw manifest show fw.manifest -o json`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := readIn(a, args[0])
			if err != nil {
				return err
			}
			s, err := firmware.Parse(b)
			if err != nil {
				return err
			}
			res := struct {
				firmware.Manifest
				SHA256 string `json:"manifest_sha256"`
				Signer string `json:"signer"`
			}{s.Manifest, hex.EncodeToString(s.Digest()), hex.EncodeToString(s.SignerName)}
			return a.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "class:    %s\nversion:  %d\nsigner:   %x\nmanifest: sha256 %x\n", s.Manifest.Class, s.Manifest.Version, s.SignerName, s.Digest())
				for _, im := range s.Manifest.Images {
					fmt.Fprintf(w, "  %s  %d bytes  %s %s\n", im.Name, im.Size, im.Hash, im.Digest)
				}
			})
		},
	}
	return c
}
