package loadgen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/device"
)

// The kinds of failure the summary counts, for connections and commands.
const (
	kindTimeout     = "timeout"
	kindRefused     = "refused"             // nothing listens there
	kindNoPorts     = "no_source_port"      // the source address ran out of ephemeral ports: add -source-addrs
	kindNoFiles     = "too_many_open_files" // lower -per-process
	kindTLS         = "tls"
	kindConnection  = "connection" // any other network error
	kindNotDone     = "not_done"   // 202: the command was not final within ?wait=
	kindBadResponse = "bad_response"
)

// dialKind names why an attempt to connect failed: the node's HTTP status
// ("http_429") when it answered, else what went wrong on the way.
func dialKind(err error) string {
	var dialErr *device.DialError
	if errors.As(err, &dialErr) && dialErr.StatusCode != 0 {
		return httpKind(dialErr.StatusCode)
	}
	return netKind(err)
}

// disconnectKind names why a session ended: its close code ("close_1001")
// or what went wrong on the way.
func disconnectKind(err error) string {
	var closeErr *websocket.CloseError
	if errors.As(err, &closeErr) {
		return fmt.Sprintf("close_%d", closeErr.Code)
	}
	if errors.Is(err, device.ErrReplaced) {
		return fmt.Sprintf("close_%d", 4008)
	}
	return netKind(err)
}

func httpKind(status int) string { return fmt.Sprintf("http_%d", status) }

// netKind names a network error.
func netKind(err error) string {
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var alert tls.AlertError
	var recordErr tls.RecordHeaderError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return kindRefused
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return kindNoPorts
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return kindNoFiles
	case errors.As(err, &certErr), errors.As(err, &unknownAuthority), errors.As(err, &alert), errors.As(err, &recordErr):
		return kindTLS
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return kindTimeout
	}
	return kindConnection
}
