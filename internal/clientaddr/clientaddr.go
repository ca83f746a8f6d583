// Package clientaddr finds the address a client connects from. By default
// that is the TCP peer. Behind a proxy the peer is the proxy, which says
// who its client is: an edge behind Fly's HTTP handler reads the
// Fly-Client-IP header, a node behind Fly's raw TCP service reads the PROXY
// protocol header (proxy_proto_options). Such a claim is believed only from
// a peer the operator listed as a trusted proxy; anyone else could forge it.
package clientaddr

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/pires/go-proxyproto"
)

// Header is the request header an edge's trusted proxy names the client in.
// Fly's proxy sets it; a self-hosted proxy is told to (Caddyfile).
const Header = "Fly-Client-IP"

// Trusted is the set of proxies whose word about the client is believed.
// Empty (the default) trusts no one: the client is the TCP peer.
type Trusted []netip.Prefix

// ParseTrusted reads a comma-separated list of addresses and CIDR
// prefixes, such as "10.0.0.0/8, 192.0.2.1, fdaa::/16".
func ParseTrusted(list string) (Trusted, error) {
	var t Trusted
	for part := range strings.SplitSeq(list, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			a, aerr := netip.ParseAddr(part)
			if aerr != nil {
				return nil, fmt.Errorf("trusted proxy %q: want an IP address or a CIDR prefix", part)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		t = append(t, p.Masked())
	}
	return t, nil
}

// Contains reports whether a is a trusted proxy.
func (t Trusted) Contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Peer is the address of r's TCP peer (behind a PROXY listener, the
// client the proxy named); the zero Addr if it cannot be read.
func Peer(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// FromRequest is the client of r: the address in the Fly-Client-IP header
// when the peer is a trusted proxy and the header holds one, else the
// peer.
func FromRequest(r *http.Request, trusted Trusted) netip.Addr {
	peer := Peer(r)
	if len(trusted) == 0 || !trusted.Contains(peer) {
		return peer
	}
	if a, err := netip.ParseAddr(strings.TrimSpace(r.Header.Get(Header))); err == nil {
		return a.Unmap()
	}
	return peer
}

// Listener reads the PROXY protocol header (v1 or v2) that connections
// from trusted proxies begin with: its source address becomes the
// connection's remote address. A trusted peer without a header is served
// as it is (a health check from the platform, a peer on the private
// network): a client behind the proxy cannot forge one, since the proxy's
// header comes before anything the client sends. Connections from anyone
// else are served as they are, their peer the client, and a PROXY header
// they send is not read (it breaks their TLS handshake). With no trusted
// proxies, ln is returned unchanged.
func Listener(ln net.Listener, trusted Trusted) net.Listener {
	if len(trusted) == 0 {
		return ln
	}
	return &proxyproto.Listener{
		Listener: ln,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			ap, err := netip.ParseAddrPort(o.Upstream.String())
			if err == nil && trusted.Contains(ap.Addr()) {
				return proxyproto.USE, nil
			}
			return proxyproto.SKIP, nil
		},
	}
}
