package testsys

import (
	"encoding/base64"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/switchboard-iot/switchboard/device/protocol"
)

// Dial connects to the node as device id, the way a device does (TLS,
// the subprotocol, Basic credentials); the handshake's status is 101 when
// it upgraded, and the session is then closed when the test ends.
func (n *Node) Dial(t testing.TB, id, devSecret string) (*websocket.Conn, int) {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: n.TLS(), Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 10 * time.Second}
	header := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+devSecret))}}
	ws, resp, err := d.DialContext(t.Context(), n.URL, header)
	if resp == nil {
		t.Fatalf("dial as %s: %v", id, err)
	}
	if ws != nil {
		t.Cleanup(func() { ws.Close() })
	}
	return ws, resp.StatusCode
}

// Accepts reports whether the node lets device id in with this secret.
func (n *Node) Accepts(t testing.TB, id, devSecret string) bool {
	t.Helper()
	ws, status := n.Dial(t, id, devSecret)
	if ws != nil {
		ws.Close()
	}
	return status == http.StatusSwitchingProtocols
}

// WantClosed reads a device session until the node closes it, and checks
// the close code and reason.
func WantClosed(t testing.TB, ws *websocket.Conn, code int, reason string) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue // a frame the node sent before closing
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code || ce.Text != reason {
			t.Fatalf("session ended with %v, want close %d %q", err, code, reason)
		}
		return
	}
}
