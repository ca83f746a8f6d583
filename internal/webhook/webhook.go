// Package webhook signs webhook deliveries (Standard Webhooks,
// https://www.standardwebhooks.com) and sends them with an HTTP client
// that is safe to point at URLs a user typed: HTTPS only, no redirects, a
// bounded time and answer, and no connection to loopback, link-local or
// private addresses, checked on the address actually dialled (after DNS),
// so that a name re-pointed after it was checked (DNS rebinding) cannot
// reach the edge's own network. A leaf: it imports no tier.
package webhook

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"syscall"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Timeout bounds one delivery, connecting and the answer included.
const Timeout = 10 * time.Second

// MaxResponse is how much of an answer is read: its body is not used, and
// reading it lets the connection be reused.
const MaxResponse = 64 << 10

// MaxURL bounds an endpoint's URL.
const MaxURL = 2048

// Options relax the client's safety for development and tests.
type Options struct {
	AllowHTTP    bool // plain http:// URLs (else https only)
	AllowPrivate bool // loopback, link-local and private addresses
	// RootCAs verifies the receivers' certificates (nil: the system's).
	RootCAs *x509.CertPool
}

// NewSecret makes an endpoint's signing secret: "whsec_" and 32 random
// bytes in standard base64, the form Standard Webhooks libraries read.
func NewSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// Sign returns the webhook-signature header's value for a message:
// "v1," and the base64 HMAC-SHA256, keyed by the secret's decoded bytes,
// of "id.timestamp.body".
func Sign(secret, msgID string, ts time.Time, body []byte) (string, error) {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return "", err
	}
	return wh.Sign(msgID, ts, body)
}

// Verify checks a delivery's headers against its body, as a receiver does
// (the timestamp within 5 minutes of now).
func Verify(secret string, body []byte, h http.Header) error {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return err
	}
	return wh.Verify(body, h)
}

// ErrRefusedURL is a URL the options do not allow.
var ErrRefusedURL = errors.New("refused URL")

// CheckURL says why a URL cannot be an endpoint, or nil: it must be
// absolute, https (http with AllowHTTP), have a host and no user info, and
// name no refused address literally (a name's addresses are checked when
// dialled).
func CheckURL(raw string, o Options) error {
	if len(raw) > MaxURL {
		return fmt.Errorf("%w: longer than %d bytes", ErrRefusedURL, MaxURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefusedURL, err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && o.AllowHTTP:
	case u.Scheme == "http":
		return fmt.Errorf("%w: plain http is refused; use https", ErrRefusedURL)
	default:
		return fmt.Errorf("%w: want an https:// URL", ErrRefusedURL)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%w: no host", ErrRefusedURL)
	}
	if u.User != nil {
		return fmt.Errorf("%w: user info in the URL is refused", ErrRefusedURL)
	}
	if u.Fragment != "" {
		return fmt.Errorf("%w: a fragment is never sent; remove it", ErrRefusedURL)
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil && !o.AllowPrivate && Private(ip) {
		return fmt.Errorf("%w: %s is a loopback, link-local or private address", ErrRefusedURL, ip)
	}
	if u.Hostname() == "localhost" && !o.AllowPrivate {
		return fmt.Errorf("%w: localhost is a loopback address", ErrRefusedURL)
	}
	return nil
}

// Private reports whether ip is an address a webhook must not reach:
// unspecified, loopback, link-local, multicast, private (RFC 1918, ULA),
// shared (100.64.0.0/10, carrier NAT) or "this network" (0.0.0.0/8).
func Private(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsUnspecified() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsPrivate() ||
		sharedNet.Contains(ip) || thisNet.Contains(ip)
}

var (
	sharedNet = netip.MustParsePrefix("100.64.0.0/10")
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")
)

// ErrPrivateAddress is a dial to a refused address.
var ErrPrivateAddress = errors.New("refused address: loopback, link-local or private")

// Client sends deliveries.
type Client struct {
	o    Options
	http *http.Client
}

// NewClient makes a client with these options. Its connections are idle
// at most 90s; Close drops them.
func NewClient(o Options) *Client {
	dialer := &net.Dialer{Timeout: Timeout}
	if !o.AllowPrivate {
		// Control runs for each address dialled, after DNS: the check
		// sees what the connection will reach.
		dialer.Control = func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			ip, err := netip.ParseAddr(host)
			if err != nil || Private(ip) {
				return fmt.Errorf("%w: %s", ErrPrivateAddress, host)
			}
			return nil
		}
	}
	transport := &http.Transport{
		Proxy:                 nil, // a proxy would dial for us, unchecked
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   Timeout,
		ResponseHeaderTimeout: Timeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &Client{o: o, http: &http.Client{
		Transport: transport,
		Timeout:   Timeout,
		// A redirect is an answer (3xx: a failure), never followed: it
		// could lead anywhere, a private address included.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Close drops the idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Message is one delivery attempt.
type Message struct {
	URL, Secret, ID string
	Timestamp       time.Time
	Body            []byte // JSON
}

// Send posts m, signed, and returns the answer's status code (0 when there
// was none) and whether it was a success (2xx).
func (c *Client) Send(ctx context.Context, m Message) (code int, err error) {
	// The scheme again (the flags may have changed since the endpoint
	// was made); the address is checked when dialled.
	if u, err := url.Parse(m.URL); err != nil {
		return 0, err
	} else if u.Scheme != "https" && (u.Scheme != "http" || !c.o.AllowHTTP) {
		return 0, fmt.Errorf("%w: %s:// is not allowed", ErrRefusedURL, u.Scheme)
	}
	sig, err := Sign(m.Secret, m.ID, m.Timestamp, m.Body)
	if err != nil {
		return 0, fmt.Errorf("signing: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.URL, bytes.NewReader(m.Body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Switchboard-Webhooks/1")
	req.Header.Set(standardwebhooks.HeaderWebhookID, m.ID)
	req.Header.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(m.Timestamp.Unix(), 10))
	req.Header.Set(standardwebhooks.HeaderWebhookSignature, sig)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxResponse))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("answered %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}
