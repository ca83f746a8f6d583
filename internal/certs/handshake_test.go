package certs

import (
	"crypto/tls"
	"crypto/x509"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkHandshake measures what a device's TLS handshake with a node
// costs in CPU (both sides, in this process, over loopback), with the
// device port's policy and certificate: in full or resumed from a session
// ticket, and with Go's default key exchange (X25519MLKEM768, post-quantum)
// or X25519 alone. It tells what a reconnect storm could save: see
// BENCHMARKS.md, "Reconnect storm".
//
//	go test -run '^$' -bench Handshake -count 3 ./internal/certs/
func BenchmarkHandshake(b *testing.B) {
	cert, err := makeSelfSigned([]string{"localhost"})
	if err != nil {
		b.Fatal(err)
	}
	for _, kx := range []struct {
		name   string
		curves []tls.CurveID
	}{{"default", nil}, {"x25519", []tls.CurveID{tls.X25519}}} {
		for _, resume := range []bool{false, true} {
			name := kx.name + "/full"
			if resume {
				name = kx.name + "/resumed"
			}
			b.Run(name, func(b *testing.B) {
				server := policy(&tls.Config{Certificates: []tls.Certificate{cert}, CurvePreferences: kx.curves}, false)
				addr := serveEcho(b, server)
				roots := x509.NewCertPool()
				roots.AddCert(cert.Leaf)
				client := &tls.Config{RootCAs: roots, ServerName: "localhost", CurvePreferences: kx.curves}
				if resume {
					client.ClientSessionCache = tls.NewLRUClientSessionCache(1)
					handshake(b, addr, client) // the first gets the ticket
				}
				b.ResetTimer()
				began := cpuTime()
				for range b.N {
					if resumed := handshake(b, addr, client); resumed != resume {
						b.Fatalf("resumed = %v, want %v", resumed, resume)
					}
				}
				b.ReportMetric(float64((cpuTime()-began).Microseconds())/float64(b.N), "cpu-µs/op")
			})
		}
	}
}

// handshake connects, sends a byte and reads it back (which also reads
// the session ticket the server sends after the handshake), and reports
// whether the session was resumed.
func handshake(b *testing.B, addr string, cfg *tls.Config) bool {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := []byte{1}
	if _, err := c.Write(buf); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Read(buf); err != nil {
		b.Fatal(err)
	}
	return c.ConnectionState().DidResume
}

// serveEcho serves TLS on loopback, echoing one byte per connection, until
// the benchmark ends.
func serveEcho(b *testing.B, cfg *tls.Config) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 1)
				if _, err := c.Read(buf); err == nil {
					_, _ = c.Write(buf)
				}
			})
		}
	})
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// cpuTime is the CPU this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
