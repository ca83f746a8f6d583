package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// Changing a device's desired state from its page (scope commands, as the
// API's PATCH /v1/devices/{id}/state/desired): a plain form holding a JSON
// merge patch (RFC 7396) and the desired version the page showed, posted
// with the session's CSRF token. app.js checks the patch before sending;
// the server checks it again, as the API does, and applies it with
// db.PatchDesired, the API's call, only if the document is still at the
// version the operator saw.

// maxStateForm bounds the desired form's body: a patch may name every key
// of a 32 KiB document, and URL-encoding can triple JSON's bytes.
const maxStateForm = 8 * db.MaxStateBytes

// handlePatchDesired applies the form's merge patch to the device's
// desired document at the form's version, then sends the browser back to
// the device's page (303). A patch that is not a JSON object, or that
// PostgreSQL could not store, changes nothing: the page again (400) with
// the patch as typed and what is wrong with it. When the document changed
// since the page was loaded (ErrVersionMismatch) nothing is overwritten:
// the page again (409) with the current state and the patch as typed, to
// check and send again.
func (c *Console) handlePatchDesired(w http.ResponseWriter, r *http.Request) {
	if !c.scopedForm(w, r, maxStateForm, db.ScopeCommands, "change a device's desired state", "devices") {
		return
	}
	id := chi.URLParam(r, "id")
	if !db.ValidDeviceID(id) {
		c.changed(w, r, id, db.ErrNotFound)
		return
	}
	typed := r.PostFormValue("patch")
	version, verr := strconv.ParseInt(r.PostFormValue("version"), 10, 64)
	patch, err := checkMergePatch(typed)
	status := http.StatusBadRequest
	switch {
	case verr != nil || version < 0:
		err = errors.New("the form is damaged (it names no version): reload the page")
	case err == nil:
		_, err = c.store.PatchDesired(r.Context(), id, patch, &version)
		switch {
		case err == nil:
			http.Redirect(w, r, devicePath(id), http.StatusSeeOther)
			return
		case errors.Is(err, db.ErrVersionMismatch):
			status = http.StatusConflict
			err = fmt.Errorf("the desired state changed meanwhile (this page showed version %d): here is the current state. "+
				"Your patch was not applied; check it against the current state and send it again", version)
		case errors.Is(err, db.ErrStateTooLarge):
			status = http.StatusRequestEntityTooLarge
			err = fmt.Errorf("%v; the limit is %d KiB", err, db.MaxStateBytes>>10)
		default:
			c.changed(w, r, id, err)
			return
		}
	}
	v := newView(r, id, "devices")
	d, ok := c.loadDevice(w, r, &v, id)
	if !ok {
		return
	}
	d.DesiredPatch, d.DesiredError = typed, "Desired state not changed: "+err.Error()+"."
	c.render(w, status, "device", v)
}

// checkMergePatch reads a merge patch as the API does: one JSON object,
// text that PostgreSQL can store in jsonb (protocol.CheckStorable). Its
// errors say what is wrong, for the page.
func checkMergePatch(text string) (json.RawMessage, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, errors.New(`type a merge patch: a JSON object, such as {"target_celsius": 21}`)
	}
	dec := json.NewDecoder(strings.NewReader(text))
	var patch map[string]json.RawMessage
	if err := dec.Decode(&patch); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax):
			return nil, fmt.Errorf("not valid JSON: %v (at byte %d)", syntax, syntax.Offset)
		case errors.As(err, &typ):
			return nil, fmt.Errorf(`a merge patch is a JSON object ({"key": value, "old_key": null}), not %s`, article(typ.Value))
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, errors.New("not valid JSON: it ends too soon")
		}
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	if patch == nil {
		return nil, errors.New(`a merge patch is a JSON object ({"key": value, "old_key": null}), not null`)
	}
	// One value only: dec.More would let a stray "}" through.
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid JSON: more follows the object")
	}
	if err := protocol.CheckStorable([]byte(text)); err != nil {
		return nil, fmt.Errorf("it cannot be stored: %v", err)
	}
	// Compact: the textarea's line breaks and indents are not the patch.
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(text)); err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	return b.Bytes(), nil
}

// article names a JSON value's kind as encoding/json's type error does
// ("array", "string", "number", "bool").
func article(kind string) string {
	switch kind {
	case "array":
		return "an array"
	case "", "object":
		return "an object"
	}
	return "a " + kind
}
