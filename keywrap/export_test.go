package keywrap

// WrapAnySize and UnwrapAnySize are Wrap and Unwrap without the KEK size
// check, for RFC 5649's vectors (an AES-192 KEK, which provd does not use).
var (
	WrapAnySize   = wrap
	UnwrapAnySize = unwrap
)
