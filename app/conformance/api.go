package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// api is the suite's client of the edge's HTTP API: it drives the devices
// as any client would.
type api struct {
	base, key string
	client    *http.Client
}

var errNotFound = errors.New("not found")

// do sends body (JSON, unless nil) and decodes a 2xx answer into out.
func (a *api) do(ctx context.Context, method, path, contentType string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusNotFound {
		return errNotFound
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// commandJSON is a command as the edge shows it.
type commandJSON struct {
	ID       string          `json:"id"`
	Status   string          `json:"status"`
	OK       *bool           `json:"ok"`
	Result   json.RawMessage `json:"result"`
	Error    string          `json:"error"`
	Attempts int             `json:"attempts"`
}

// send sends a command; with wait (such as "10s") the edge answers once it
// is final or the wait is over.
func (a *api) send(ctx context.Context, deviceID, name string, args any, wait string) (commandJSON, error) {
	path := "/v1/devices/" + url.PathEscape(deviceID) + "/commands"
	if wait != "" {
		path += "?wait=" + wait
	}
	var c commandJSON
	err := a.do(ctx, http.MethodPost, path, "application/json", map[string]any{"name": name, "args": args, "timeout": "30s"}, &c)
	return c, err
}

func (a *api) command(ctx context.Context, id string) (commandJSON, error) {
	var c commandJSON
	err := a.do(ctx, http.MethodGet, "/v1/commands/"+url.PathEscape(id), "", nil, &c)
	return c, err
}

// deviceJSON is a device as the edge shows it.
type deviceJSON struct {
	Online   bool `json:"online"`
	Presence *struct {
		NodeID string `json:"node_id"`
	} `json:"presence"`
}

func (a *api) device(ctx context.Context, id string) (deviceJSON, error) {
	var d deviceJSON
	err := a.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id), "", nil, &d)
	return d, err
}

func (a *api) disable(ctx context.Context, id string) error {
	return a.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/disable", "", nil, nil)
}

// eventJSON is a stored event.
type eventJSON struct {
	ID   int64           `json:"id"`
	Name string          `json:"name"`
	Data json.RawMessage `json:"data"`
}

// events returns the device's newest events called name (up to 100).
func (a *api) events(ctx context.Context, deviceID, name string) ([]eventJSON, error) {
	var page struct {
		Events []eventJSON `json:"events"`
	}
	err := a.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(deviceID)+"/events?limit=100&name="+url.QueryEscape(name), "", nil, &page)
	return page.Events, err
}

// stateJSON is a device's state.
type stateJSON struct {
	Desired        map[string]json.RawMessage `json:"desired"`
	Reported       map[string]json.RawMessage `json:"reported"`
	Delta          map[string]json.RawMessage `json:"delta"`
	DesiredVersion int64                      `json:"desired_version"`
}

func (a *api) state(ctx context.Context, id string) (stateJSON, error) {
	var s stateJSON
	err := a.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id)+"/state", "", nil, &s)
	return s, err
}

func (a *api) patchDesired(ctx context.Context, id string, patch any) (stateJSON, error) {
	var s stateJSON
	err := a.do(ctx, http.MethodPatch, "/v1/devices/"+url.PathEscape(id)+"/state/desired", "application/merge-patch+json", patch, &s)
	return s, err
}
