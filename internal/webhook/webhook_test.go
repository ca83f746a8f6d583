package webhook

import (
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	secret := NewSecret()
	if !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("secret %q, want whsec_…", secret)
	}
	var got atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := Verify(secret, body, r.Header); err != nil {
			t.Errorf("verify: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if err := Verify(NewSecret(), body, r.Header); err == nil {
			t.Error("another secret verified the signature")
		}
		if !strings.HasPrefix(r.Header.Get("webhook-signature"), "v1,") || r.Header.Get("webhook-id") != "msg_1" {
			t.Errorf("headers %v", r.Header)
		}
		got.Add(1)
	}))
	defer srv.Close()
	c := NewClient(Options{AllowHTTP: true, AllowPrivate: true})
	defer c.Close()
	code, err := c.Send(t.Context(), Message{URL: srv.URL, Secret: secret, ID: "msg_1", Timestamp: time.Now(), Body: []byte(`{"a":1}`)})
	if err != nil || code != 200 || got.Load() != 1 {
		t.Fatalf("send: %d %v (received %d)", code, err, got.Load())
	}
	// A body changed in flight does not verify.
	sig, _ := Sign(secret, "msg_1", time.Now(), []byte(`{"a":1}`))
	h := http.Header{"Webhook-Id": {"msg_1"}, "Webhook-Timestamp": {"1"}, "Webhook-Signature": {sig}}
	if Verify(secret, []byte(`{"a":2}`), h) == nil {
		t.Error("a changed body verified")
	}
}

// TestPrivateRefusedWhenDialled: the check is on the address dialled,
// after DNS: a name (localhost) that resolves to loopback is refused as
// the literal address is, and the receiver sees nothing.
func TestPrivateRefusedWhenDialled(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]
	c := NewClient(Options{AllowHTTP: true})
	defer c.Close()
	for _, u := range []string{srv.URL, "http://localhost" + port} {
		_, err := c.Send(t.Context(), Message{URL: u, Secret: NewSecret(), ID: "msg_1", Timestamp: time.Now(), Body: []byte(`{}`)})
		if !errors.Is(err, ErrPrivateAddress) {
			t.Errorf("%s: err %v, want ErrPrivateAddress", u, err)
		}
	}
	if hits.Load() != 0 {
		t.Errorf("the receiver on loopback got %d requests", hits.Load())
	}
	// With the flag, it is reached.
	c2 := NewClient(Options{AllowHTTP: true, AllowPrivate: true})
	defer c2.Close()
	if _, err := c2.Send(t.Context(), Message{URL: "http://localhost" + port, Secret: NewSecret(), ID: "m", Timestamp: time.Now(), Body: []byte(`{}`)}); err != nil {
		t.Errorf("with AllowPrivate: %v", err)
	}
}

func TestHTTPRefused(t *testing.T) {
	c := NewClient(Options{AllowPrivate: true})
	defer c.Close()
	_, err := c.Send(t.Context(), Message{URL: "http://example.com/", Secret: NewSecret(), ID: "m", Timestamp: time.Now(), Body: []byte(`{}`)})
	if !errors.Is(err, ErrRefusedURL) {
		t.Errorf("plain http sent: err %v", err)
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var hits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer target.Close()
	srv := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	defer srv.Close()
	c := NewClient(Options{AllowHTTP: true, AllowPrivate: true})
	defer c.Close()
	code, err := c.Send(t.Context(), Message{URL: srv.URL, Secret: NewSecret(), ID: "m", Timestamp: time.Now(), Body: []byte(`{}`)})
	if err == nil || code != http.StatusTemporaryRedirect || hits.Load() != 0 {
		t.Errorf("redirect: code %d err %v, target hit %d times", code, err, hits.Load())
	}
}

func TestCheckURL(t *testing.T) {
	strict := Options{}
	for _, tc := range []struct {
		url string
		o   Options
		ok  bool
	}{
		{"https://hooks.example.com/x", strict, true},
		{"http://hooks.example.com/x", strict, false},
		{"http://hooks.example.com/x", Options{AllowHTTP: true}, true},
		{"ftp://hooks.example.com/x", Options{AllowHTTP: true}, false},
		{"https://127.0.0.1/x", strict, false},
		{"https://10.1.2.3/x", strict, false},
		{"https://169.254.169.254/latest", strict, false},
		{"https://[::1]/x", strict, false},
		{"https://[::ffff:192.168.0.1]/x", strict, false},
		{"https://localhost/x", strict, false},
		{"https://127.0.0.1/x", Options{AllowPrivate: true}, true},
		{"https://user:pw@hooks.example.com/", strict, false},
		{"https:///nohost", strict, false},
		{"hooks.example.com", strict, false},
	} {
		if err := CheckURL(tc.url, tc.o); (err == nil) != tc.ok {
			t.Errorf("CheckURL(%q, %+v) = %v, want ok %v", tc.url, tc.o, err, tc.ok)
		}
	}
	if !Private(netip.MustParseAddr("100.64.1.1")) || Private(netip.MustParseAddr("8.8.8.8")) {
		t.Error("Private: wrong for shared or public addresses")
	}
}

// An https receiver (the only kind allowed without AllowHTTP): its
// certificate is verified against RootCAs, a signed request reaches it,
// and one it cannot prove is refused without the request being sent.
func TestHTTPSReceiver(t *testing.T) {
	secret := NewSecret()
	got := make(chan error, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- Verify(secret, body, r.Header)
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below is expected
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	msg := Message{URL: srv.URL, Secret: secret, ID: "msg_7", Timestamp: time.Now(), Body: []byte(`{"type":"device.event"}`)}

	c := NewClient(Options{AllowPrivate: true, RootCAs: roots})
	defer c.Close()
	if code, err := c.Send(t.Context(), msg); err != nil || code != http.StatusNoContent {
		t.Fatalf("https receiver: code %d, err %v", code, err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the receiver could not verify the signature: %v", err)
	}

	untrusting := NewClient(Options{AllowPrivate: true}) // the system's roots: the test CA is not among them
	defer untrusting.Close()
	var unknown x509.UnknownAuthorityError
	if _, err := untrusting.Send(t.Context(), msg); !errors.As(err, &unknown) {
		t.Fatalf("a certificate from an unknown authority: err %v, want x509.UnknownAuthorityError", err)
	}
	select {
	case <-got:
		t.Fatal("the receiver was sent a request over a connection the client did not trust")
	default:
	}
}
