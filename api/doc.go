// Package api is the contract between provd's callers and its agent: the
// operations (Service), their requests and results, the error kinds with
// their exit codes and HTTP statuses, and the daemon's routes. The in-process
// agent implements Service, the daemon serves it over HTTP/JSON on a unix
// socket (docs/api.md), and the daemon's client implements it again on the
// other side; all three speak these types, so a command's output and exit
// code do not depend on the path it took.
//
// It exists so that a program that talks to the daemon (the CLI, the PKCS#11
// module to come, a test) links this contract and nothing of the daemon:
// api imports only the lower layers whose sentinels it names (tpm, store,
// audit, policy, catalog), never agent, the server or a config format.
//
// The one rule for request and result types: each is defined once, here, and
// its JSON encoding is its wire form. Go fields hold Go values
// (crypto.PublicKey, policy.Bank, *policy.PCRValues); a type whose fields have
// no natural JSON form marshals itself (MarshalJSON/UnmarshalJSON in this
// package). The agent takes and returns these types, the server decodes a
// request body into them with internal/strictjson (unknown fields, duplicate
// keys and trailing data refused) and hands it to the agent unchanged, and the
// client encodes them. Byte strings are base64 (encoding/json's []byte).
// Calls whose input or output is a single value (a key name, a blob, a
// digest) keep Go arguments in Service; their bodies are the small envelope
// types in wire.go.
package api
