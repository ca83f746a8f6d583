package console

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/origin"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Managing a device from its page (scope admin): disable, enable, rotate
// its secret, delete it, edit its labels. Each is a plain form (no script
// needed) posted with the session's CSRF token, and calls the store
// function that the API's route and "switchboard devices" call, so the
// three cannot disagree.

// maxManageForm bounds a management form's body: the labels form, the
// largest, holds at most 64 lines of 127 bytes, twice.
const maxManageForm = 64 << 10

// adminForm admits a management form: sent by this site's own page
// (origin), with the session's CSRF token, by a session whose key has the
// admin scope. Otherwise it has answered 403.
func (c *Console) adminForm(w http.ResponseWriter, r *http.Request) bool {
	return c.scopedForm(w, r, maxManageForm, db.ScopeAdmin, "manage devices", "devices")
}

// scopedForm admits a form that changes something, as adminForm does, for
// a key with scope (what says what the scope allows, nav names the page's
// nav link): sent by this site's own page, with the session's CSRF token,
// its body at most limit bytes. Otherwise it has answered: 403, or 413
// for a body over limit (a plain 403 would blame the token).
func (c *Console) scopedForm(w http.ResponseWriter, r *http.Request, limit int64, scope db.Scope, what, nav string) bool {
	if why := origin.CrossSite(r); why != "" {
		problem.CrossSiteRequest.Write(w, why)
		return false
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	if err := r.ParseForm(); err != nil {
		if tooLarge := new(http.MaxBytesError); errors.As(err, &tooLarge) {
			v := newView(r, "Form too large", nav)
			v.Error = fmt.Sprintf("This form is too large: at most %d KiB.", limit>>10)
			c.render(w, http.StatusRequestEntityTooLarge, "error", v)
			return false
		}
	}
	if !checkCSRF(r, session(r).CSRF) {
		forbidden(w)
		return false
	}
	if !session(r).Key.Has(scope) {
		v := newView(r, "Forbidden", nav)
		c.lacksScope(w, v, what, string(scope))
		return false
	}
	return true
}

// devicePath is the console's page of device id (an old-format id may
// hold ':').
func devicePath(id string) string { return "/devices/" + url.PathEscape(id) }

// handleDisable refuses the device's connections and closes its session;
// handleEnable lets it connect again. Both are idempotent: a form sent
// twice changes nothing more (a second disable sends the close again,
// which repairs one that failed).
func (c *Console) handleDisable(w http.ResponseWriter, r *http.Request) {
	c.switchDevice(w, r, c.store.DisableDevice)
}

func (c *Console) handleEnable(w http.ResponseWriter, r *http.Request) {
	c.switchDevice(w, r, c.store.EnableDevice)
}

func (c *Console) switchDevice(w http.ResponseWriter, r *http.Request, change func(ctx context.Context, id string) error) {
	if !c.adminForm(w, r) {
		return
	}
	id := chi.URLParam(r, "id")
	err := db.ErrNotFound // unless the id could name a device
	if db.ValidDeviceID(id) {
		err = change(r.Context(), id)
	}
	if !c.changed(w, r, id, err) {
		return
	}
	http.Redirect(w, r, devicePath(id), http.StatusSeeOther)
}

// changed answers a change that failed: 404 for a device that is not
// there, 503 (or 500) when the database failed; it reports whether err
// was nil.
func (c *Console) changed(w http.ResponseWriter, r *http.Request, id string, err error) bool {
	v := newView(r, "Device", "devices")
	switch {
	case err == nil:
		return true
	case errors.Is(err, db.ErrNotFound):
		c.notFound(w, v, "No device has the id "+id+" (deleted meanwhile?). See the list of devices.")
	default:
		c.unavailable(w, r, &v, err)
	}
	return false
}

// rotatedPage is the answer to a rotation: the new secret, shown this
// once (the store keeps its digest only).
type rotatedPage struct {
	ID, Secret string
	Grace      string
	Until      time.Time // when the replaced secret stops working
}

// handleRotate gives the device a new random secret, the replaced one
// working for db.DefaultRotationGrace more, as "switchboard devices
// rotate" does by default. The form names the secret it replaces
// (fingerprint): sent again (a reload, a double click), it changes
// nothing and says so (409), where a second rotation would stop at once
// the secret the device still uses.
func (c *Console) handleRotate(w http.ResponseWriter, r *http.Request) {
	if !c.adminForm(w, r) {
		return
	}
	id := chi.URLParam(r, "id")
	v := newView(r, "Rotate "+id, "devices")
	newSecret := secret.New("")
	err := db.ErrNotFound
	var until time.Time
	if db.ValidDeviceID(id) {
		until, err = c.store.RotateDeviceSecretFrom(r.Context(), id, r.PostFormValue("fingerprint"), secret.Hash(newSecret), db.DefaultRotationGrace)
	}
	if errors.Is(err, db.ErrSecretChanged) {
		v.Error = "The secret of " + id + " changed since its page was loaded (this form was sent twice?), so it was not rotated again: " +
			"the secret shown the first time is the device's. To rotate it once more, open the device's page again."
		c.render(w, http.StatusConflict, "error", v)
		return
	}
	if !c.changed(w, r, id, err) {
		return
	}
	v.Data = &rotatedPage{ID: id, Secret: newSecret, Grace: formatGrace(db.DefaultRotationGrace), Until: until}
	c.render(w, http.StatusOK, "rotated", v)
}

// formatGrace writes a grace as the CLI's flag does ("24h", not "24h0m0s").
func formatGrace(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// deletePage is the delete confirmation's data.
type deletePage struct {
	ID string
}

// handleDeleteConfirm asks for the device's id to be typed before it is
// deleted: a delete cannot be undone, and a click alone is too easy.
func (c *Console) handleDeleteConfirm(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	v := newView(r, "Delete "+id, "devices")
	if !v.CanAdmin {
		c.lacksScope(w, v, "manage devices", "admin")
		return
	}
	exists, err := c.store.DeviceExists(r.Context(), id)
	switch {
	case err != nil:
		c.unavailable(w, r, &v, err)
		return
	case !exists:
		c.notFound(w, v, "No device has the id "+id+". See the list of devices.")
		return
	}
	v.Data = &deletePage{ID: id}
	c.render(w, http.StatusOK, "delete", v)
}

// handleDelete deletes the device with everything stored about it, and
// closes its session, once its id was typed into the form; then the list
// of devices says it is gone. It takes any id, the old format's (with
// ':') too, as the API does: deleting is all that is left to those.
func (c *Console) handleDelete(w http.ResponseWriter, r *http.Request) {
	if !c.adminForm(w, r) {
		return
	}
	id := chi.URLParam(r, "id")
	if typed := strings.TrimSpace(r.PostFormValue("confirm")); typed != id {
		v := newView(r, "Delete "+id, "devices")
		v.Error = "Type the device's id, " + id + ", to delete it."
		v.Data = &deletePage{ID: id}
		c.render(w, http.StatusBadRequest, "delete", v)
		return
	}
	if _, err := c.store.DeleteDevice(r.Context(), id); !c.changed(w, r, id, err) {
		return
	}
	http.Redirect(w, r, "/devices?"+url.Values{"deleted": {id}}.Encode(), http.StatusSeeOther)
}

// handleLabels sets the device's labels to the form's "key=value" lines,
// checked by the rules the API checks (db.CheckLabels). It changes only
// what the operator changed from the labels the page showed (the form's
// "before"), as a JSON merge patch, so a label another operator set
// meanwhile stays, and a form sent twice changes nothing more. A bad line
// changes nothing: the page again, with the lines as typed and what is
// wrong with them (400).
func (c *Console) handleLabels(w http.ResponseWriter, r *http.Request) {
	if !c.adminForm(w, r) {
		return
	}
	id := chi.URLParam(r, "id")
	if !db.ValidDeviceID(id) {
		c.changed(w, r, id, db.ErrNotFound)
		return
	}
	typed := r.PostFormValue("labels")
	set, remove, err := labelPatch(typed, r.PostFormValue("before"))
	if err == nil && (len(set) > 0 || len(remove) > 0) {
		_, err = c.store.PatchLabels(r.Context(), id, false, set, remove)
		switch {
		case errors.Is(err, db.ErrTooManyLabels):
			err = fmt.Errorf("with the labels set meanwhile, the device would have more than %d: remove some", db.MaxLabels)
		case err != nil:
			c.changed(w, r, id, err)
			return
		}
	}
	if err != nil {
		v := newView(r, id, "devices")
		d, ok := c.loadDevice(w, r, &v, id)
		if !ok {
			return
		}
		d.LabelsText, d.LabelsError = typed, "Labels not saved: "+err.Error()+"."
		c.render(w, http.StatusBadRequest, "device", v)
		return
	}
	http.Redirect(w, r, devicePath(id), http.StatusSeeOther)
}

// labelPatch is the merge patch from the labels before (as the page
// showed them) to the typed ones: the keys to set (new or changed) and
// the keys to remove.
func labelPatch(typed, before string) (set map[string]string, remove []string, err error) {
	want, err := parseLabelLines(typed)
	if err == nil {
		err = db.CheckLabels(want, len(want))
	}
	if err != nil {
		return nil, nil, err
	}
	had, err := parseLabelLines(before)
	if err != nil {
		return nil, nil, errors.New("the form is damaged: reload the page")
	}
	set = map[string]string{}
	for k, v := range want {
		if old, ok := had[k]; !ok || old != v {
			set[k] = v
		}
	}
	for k := range had {
		if _, kept := want[k]; !kept {
			remove = append(remove, k)
		}
	}
	return set, remove, nil
}

// parseLabelLines reads "key=value" terms, one a line or separated by
// commas (neither can be in a label); blank ones are skipped, and spaces
// around each part trimmed. The rules of keys and values are
// db.CheckLabels's.
func parseLabelLines(text string) (map[string]string, error) {
	labels := map[string]string{}
	for _, term := range strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == ',' }) {
		term = strings.TrimSpace(term)
		if term == "" {
			continue
		}
		k, val, ok := strings.Cut(term, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want key=value", term)
		}
		k, val = strings.TrimSpace(k), strings.TrimSpace(val)
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("the label %q is given twice", k)
		}
		labels[k] = val
	}
	return labels, nil
}

// labelLines writes labels as the form reads them, sorted by key, each
// followed by sep.
func labelLines(labels map[string]string, sep string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		b.WriteString(k + "=" + labels[k] + sep)
	}
	return b.String()
}
