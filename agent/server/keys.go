package server

import (
	"context"
	"crypto/x509"
	"net/http"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/audit"
)

// keyHandlers are the key and audit-repair endpoints' handlers by operation.
func (s *Server) keyHandler(ep endpoint) http.HandlerFunc {
	ag := s.ag
	switch ep.Op {
	case "key-derive":
		return handle(s, ep, func(ctx context.Context, w api.DeriveRequest) (api.KeyInfo, error) {
			return ag.DeriveKey(ctx, w)
		})
	case "key-create":
		return handle(s, ep, func(ctx context.Context, w api.CreateRequest) (api.KeyInfo, error) {
			if w.DuplicableTo != nil && len(w.EKCA) == 0 {
				w.EKCA = *s.ekCA.Load()
			}
			return ag.CreateKey(ctx, w)
		})
	case "key-delete":
		return handle(s, ep, func(ctx context.Context, w api.KeyName) (api.Empty, error) {
			return api.Empty{}, ag.DeleteKey(ctx, w.Name)
		})
	case "key-export-blob":
		return handle(s, ep, func(ctx context.Context, w api.KeyName) (api.DataResponse, error) {
			p, err := ag.ExportKeyBlob(ctx, w.Name)
			return api.DataResponse{Data: p}, err
		})
	case "key-import-blob":
		return handle(s, ep, func(ctx context.Context, w api.ImportBlobRequest) (api.KeyInfo, error) {
			return ag.ImportKeyBlob(ctx, w.Name, w.PEM)
		})
	case "kek-import":
		return handle(s, ep, func(ctx context.Context, w api.KEKImportRequest) (api.KeyInfo, error) {
			return ag.ImportKEK(ctx, w)
		})
	case "key-export":
		return handle(s, ep, func(ctx context.Context, w api.KeyExportRequest) (api.DataResponse, error) {
			p, err := ag.ExportKey(ctx, w)
			return api.DataResponse{Data: p}, err
		})
	case "key-import":
		return handle(s, ep, func(ctx context.Context, w api.KeyImportRequest) (api.KeyInfo, error) {
			return ag.ImportKey(ctx, w)
		})
	case "peer-identity":
		return handle(s, ep, func(ctx context.Context, _ empty) (api.PeerIdentity, error) {
			return ag.PeerIdentity(ctx)
		})
	case "dup-export":
		return handle(s, ep, func(ctx context.Context, w api.DupExportRequest) (api.DupFile, error) {
			if len(w.EKCA) == 0 {
				w.EKCA = *s.ekCA.Load()
			}
			return ag.DupExport(ctx, w)
		})
	case "attest-identity":
		return handle(s, ep, func(ctx context.Context, _ empty) (fleetapi.EnrollRequest, error) {
			return ag.AttestIdentity(ctx)
		})
	case "attest-activate":
		return handle(s, ep, ag.AttestActivate)
	case "attest-quote":
		return handle(s, ep, ag.AttestQuote)
	case "attest-install":
		return handle(s, ep, ag.AttestInstall)
	case "attest-secret":
		return handle(s, ep, ag.AttestSecret)
	case "attest-record":
		return handle(s, ep, ag.AttestRecord)
	case "attest-sign":
		return handle(s, ep, func(ctx context.Context, w api.SignRequest) (api.DataResponse, error) {
			h, err := api.ParseHash(w.Hash)
			if err != nil {
				return api.DataResponse{}, err
			}
			sig, err := ag.AttestSign(ctx, w.Name, w.Digest, api.SignOptions{Scheme: w.Scheme, Hash: h})
			return api.DataResponse{Data: sig}, err
		})
	case "peer-prove":
		return handle(s, ep, func(ctx context.Context, c api.PeerChallenge) (api.PeerProof, error) {
			return ag.PeerProve(ctx, c)
		})
	case "pk-export":
		return handle(s, ep, func(ctx context.Context, w api.PKExportRequest) (api.DupFile, error) {
			if len(w.EKCA) == 0 {
				w.EKCA = *s.ekCA.Load()
			}
			return ag.PKExport(ctx, w)
		})
	case "provision-from":
		return handle(s, ep, func(ctx context.Context, w api.PKAdoptRequest) (api.ProvisionResult, error) {
			return ag.ProvisionFrom(ctx, w)
		})
	case "dup-import":
		return handle(s, ep, func(ctx context.Context, w api.DupImportRequest) (api.KeyInfo, error) {
			return ag.DupImport(ctx, w)
		})
	case "key-list":
		return handle(s, ep, func(ctx context.Context, _ empty) ([]api.KeyInfo, error) {
			keys, err := ag.ListKeys(ctx)
			if keys == nil {
				keys = []api.KeyInfo{}
			}
			return keys, err
		})
	case "key-public":
		return handle(s, ep, func(ctx context.Context, w api.KeyName) (api.KeyPublicResponse, error) {
			pub, info, err := ag.KeyPublic(ctx, w.Name)
			if err != nil {
				return api.KeyPublicResponse{}, err
			}
			der, err := x509.MarshalPKIXPublicKey(pub)
			return api.KeyPublicResponse{Key: info, Public: der}, err
		})
	case "key-sign":
		return handleChecked(s, ep, func(ctx context.Context, w api.SignRequest) (api.DataResponse, func(*api.DataResponse) error, error) {
			h, err := api.ParseHash(w.Hash)
			if err != nil {
				return api.DataResponse{}, nil, err
			}
			finish, err := ag.SignDeferred(ctx, w.Name, w.Digest, api.SignOptions{Scheme: w.Scheme, Hash: h})
			if err != nil {
				return api.DataResponse{}, nil, err
			}
			return api.DataResponse{}, func(res *api.DataResponse) (err error) {
				res.Data, err = finish()
				return err
			}, nil
		})
	case "key-hmac":
		return handle(s, ep, func(ctx context.Context, w api.DataRequest) (api.DataResponse, error) {
			mac, err := ag.HMAC(ctx, w.Name, w.Data)
			return api.DataResponse{Data: mac}, err
		})
	case "key-ecdh":
		return handle(s, ep, func(ctx context.Context, w api.ECDHRequest) (api.DataResponse, error) {
			peer, err := api.ParsePeer(w.Curve, w.Peer)
			if err != nil {
				return api.DataResponse{}, err
			}
			z, err := ag.ECDH(ctx, w.Name, peer)
			return api.DataResponse{Data: z}, err
		})
	case "key-decrypt":
		return handle(s, ep, func(ctx context.Context, w api.DecryptRequest) (api.DataResponse, error) {
			h, err := api.ParseHash(w.Hash)
			if err != nil {
				return api.DataResponse{}, err
			}
			plain, err := ag.Decrypt(ctx, w.Name, w.Ciphertext, h)
			return api.DataResponse{Data: plain}, err
		})
	case "key-encrypt-data":
		return handle(s, ep, func(ctx context.Context, w api.DataRequest) (api.DataResponse, error) {
			env, err := ag.EncryptData(ctx, w.Name, w.Data)
			return api.DataResponse{Data: env}, err
		})
	case "key-decrypt-data":
		return handle(s, ep, func(ctx context.Context, w api.DataRequest) (api.DataResponse, error) {
			plain, err := ag.DecryptData(ctx, w.Name, w.Data)
			return api.DataResponse{Data: plain}, err
		})
	case "audit-repair":
		return handle(s, ep, func(ctx context.Context, w api.AuditRepairRequest) (audit.Report, error) {
			return ag.AuditRepair(ctx, w.AnchorLast)
		})
	}
	return nil
}
