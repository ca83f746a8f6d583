package origin

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestCrossSite(t *testing.T) {
	for _, c := range []struct {
		name  string
		host  string
		tls   bool
		hdr   map[string]string
		cross bool
	}{
		{"no header: not a browser", "example.com", false, nil, false},
		{"own page", "example.com", false, map[string]string{"Origin": "http://example.com", "Sec-Fetch-Site": "same-origin"}, false},
		{"typed in", "example.com", false, map[string]string{"Sec-Fetch-Site": "none"}, false},
		{"own page, old browser", "example.com:8080", false, map[string]string{"Origin": "http://example.com:8080"}, false},
		{"case and default port", "Example.COM:443", true, map[string]string{"Origin": "HTTPS://example.com"}, false},
		{"default port in Origin", "example.com", true, map[string]string{"Origin": "https://example.com:443"}, false},
		{"behind a TLS proxy", "example.com", false, map[string]string{"X-Forwarded-Proto": "https", "Origin": "https://example.com"}, false},
		{"IPv6", "[::1]:8080", false, map[string]string{"Origin": "http://[::1]:8080"}, false},

		{"cross-site", "example.com", false, map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, true},
		{"same-site", "example.com", false, map[string]string{"Sec-Fetch-Site": "same-site"}, true},
		{"unknown Sec-Fetch-Site", "example.com", false, map[string]string{"Sec-Fetch-Site": "maybe"}, true},
		{"foreign Origin despite same-origin", "example.com", false, map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"}, true},
		{"another port", "example.com:8080", false, map[string]string{"Origin": "http://example.com:8081"}, true},
		{"plain HTTP page to HTTPS", "example.com", true, map[string]string{"Origin": "http://example.com"}, true},
		{"HTTPS page to plain HTTP", "example.com", false, map[string]string{"Origin": "https://example.com"}, true},
		{"null", "example.com", false, map[string]string{"Origin": "null"}, true},
		{"suffix of ours", "example.com", false, map[string]string{"Origin": "http://example.com.evil.example"}, true},
		{"with a path", "example.com", false, map[string]string{"Origin": "http://example.com/x"}, true},
		{"with user info", "example.com", false, map[string]string{"Origin": "http://u@example.com"}, true},
		{"garbage", "example.com", false, map[string]string{"Origin": "%zz"}, true},
	} {
		r := httptest.NewRequest(http.MethodPost, "/sign-in", nil)
		r.Host = c.host
		if c.tls {
			r.TLS = &tls.ConnectionState{}
		} else {
			r.TLS = nil
		}
		for k, v := range c.hdr {
			r.Header.Set(k, v)
		}
		if why := CrossSite(r); (why != "") != c.cross {
			t.Errorf("%s: CrossSite = %q, want cross-site %v", c.name, why, c.cross)
		}
	}
}
