package elector

import (
	"errors"
	"fmt"

	"github.com/metaparticle-io/sync/wire"
)

// The Engine's methods return *wire.Error values, so that the HTTP transport only maps codes to
// status codes (see StatusOf) and every client sees the same stable codes.

func errorf(code wire.ErrorCode, format string, args ...any) *wire.Error {
	return &wire.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the wire.ErrorCode of err: its own when err is (or wraps) a *wire.Error,
// wire.CodeInternal otherwise.
func CodeOf(err error) wire.ErrorCode {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code
	}
	return wire.CodeInternal
}
