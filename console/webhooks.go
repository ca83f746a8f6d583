package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
)

// Webhook endpoints (scope admin, as the API's /v1/webhooks): the list
// with each endpoint's state (active, paused, or disabled after failing
// for the give-up window, with why and since when), pause and resume
// forms, and an endpoint's page with its recent deliveries. Both lists
// page in the API's words, with the API's cursors (the same digests as
// edge/webhooks.go), so that a next of GET /v1/webhooks or of
// GET /v1/webhooks/{id}/deliveries opens its page here too. Endpoints are
// created, changed and deleted through the API.

// Rows a page of each list, unless ?limit= says (1 to db.MaxPage).
const webhooksPerPage = 50

// The listings' cursor digests: edge/webhooks.go's.
func webhooksDigest() []byte { return db.ListDigest("webhooks") }

func deliveriesDigest(id int64) []byte {
	return db.ListDigest("webhook-deliveries", strconv.FormatInt(id, 10))
}

// webhooksPage is the webhooks list's data.
type webhooksPage struct {
	Webhooks []db.Webhook
	Next     string // the next page's URL; "" on the last
}

// webhookPage is an endpoint's page data.
type webhookPage struct {
	Webhook    db.Webhook
	Deliveries []db.WebhookDelivery
	Next       string // the next (older) page's URL; "" on the last
}

// webhookActions is the data of an endpoint's pause and resume forms:
// From says which page they are on, to go back to ("list" or "page").
type webhookActions struct {
	CSRF    string
	Webhook db.Webhook
	From    string
}

// readIntPage reads a list's ?limit= and ?cursor= (a cursor holding a
// positive whole number, the last row's id): the limit and the id to
// continue from (0: the first page), or what is wrong, for #error.
func readIntPage(q url.Values, digest []byte) (limit int, after int64, problem string) {
	limit = webhooksPerPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > db.MaxPage {
			return 0, 0, fmt.Sprintf("Limit: a page holds 1 to %d rows.", db.MaxPage)
		}
		limit = n
	}
	if s := q.Get("cursor"); s != "" {
		last, err := db.DecodeCursor(s, digest)
		if err != nil {
			return 0, 0, "The page link (" + err.Error() + "): start again from the first page."
		}
		if after, err = strconv.ParseInt(last, 10, 64); err != nil || after < 1 {
			return 0, 0, "The page link is damaged: start again from the first page."
		}
	}
	return limit, after, ""
}

// nextLink is the URL of the page after the row last, keeping ?limit=.
func nextLink(path string, q url.Values, digest []byte, last int64) string {
	next := url.Values{"cursor": {db.EncodeCursor(digest, strconv.FormatInt(last, 10))}}
	if l := q.Get("limit"); l != "" {
		next.Set("limit", l)
	}
	return path + "?" + next.Encode()
}

// handleWebhooks lists the endpoints, oldest first, as GET /v1/webhooks.
func (c *Console) handleWebhooks(w http.ResponseWriter, r *http.Request) {
	v := newView(r, "Webhooks", "webhooks")
	if !v.CanAdmin {
		c.lacksScope(w, v, "manage webhooks", "admin")
		return
	}
	d := &webhooksPage{}
	v.Data = d
	q := r.URL.Query()
	limit, after, problem := readIntPage(q, webhooksDigest())
	if problem != "" {
		v.Error = problem
		c.render(w, http.StatusBadRequest, "webhooks", v)
		return
	}
	list, more, err := c.store.ListWebhooks(r.Context(), after, limit)
	if err != nil {
		c.unavailable(w, r, &v, err)
		return
	}
	d.Webhooks = list
	if more && len(list) > 0 {
		d.Next = nextLink("/webhooks", q, webhooksDigest(), list[len(list)-1].ID)
	}
	c.render(w, http.StatusOK, "webhooks", v)
}

// webhookID reads the route's {id}: 0 when it cannot name an endpoint.
func webhookID(r *http.Request) int64 {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id < 1 {
		return 0
	}
	return id
}

// handleWebhook shows an endpoint and its deliveries, newest first, as
// GET /v1/webhooks/{id}/deliveries.
func (c *Console) handleWebhook(w http.ResponseWriter, r *http.Request) {
	v := newView(r, "Webhook", "webhooks")
	if !v.CanAdmin {
		c.lacksScope(w, v, "manage webhooks", "admin")
		return
	}
	id := webhookID(r)
	wh, err := c.store.GetWebhook(r.Context(), id)
	switch {
	case id == 0 || errors.Is(err, db.ErrNotFound):
		c.notFound(w, v, "No webhook has the id "+chi.URLParam(r, "id")+". See the list of webhooks.")
		return
	case err != nil:
		c.unavailable(w, r, &v, err)
		return
	}
	d := &webhookPage{Webhook: wh}
	v.Title = "Webhook " + strconv.FormatInt(id, 10)
	v.Data = d
	q := r.URL.Query()
	limit, before, problem := readIntPage(q, deliveriesDigest(id))
	if problem != "" {
		v.Error = problem
		c.render(w, http.StatusBadRequest, "webhook", v)
		return
	}
	list, more, err := c.store.ListWebhookDeliveries(r.Context(), id, before, limit)
	switch {
	case errors.Is(err, db.ErrNotFound): // deleted meanwhile
		c.notFound(w, v, "No webhook has the id "+chi.URLParam(r, "id")+". See the list of webhooks.")
		return
	case err != nil:
		c.unavailable(w, r, &v, err)
		return
	}
	d.Deliveries = list
	if more && len(list) > 0 {
		d.Next = nextLink("/webhooks/"+strconv.FormatInt(id, 10), q, deliveriesDigest(id), list[len(list)-1].ID)
	}
	c.render(w, http.StatusOK, "webhook", v)
}

// handlePauseWebhook stops an endpoint's deliveries (they wait, pending);
// handleResumeWebhook starts them again and, as the API's
// PATCH {"paused": false} does (the same store call), enables an endpoint
// that was disabled, its failures forgotten. Both are idempotent, and send
// the browser back to the page the form was on (303).
func (c *Console) handlePauseWebhook(w http.ResponseWriter, r *http.Request) {
	c.pauseWebhook(w, r, true)
}

func (c *Console) handleResumeWebhook(w http.ResponseWriter, r *http.Request) {
	c.pauseWebhook(w, r, false)
}

func (c *Console) pauseWebhook(w http.ResponseWriter, r *http.Request, paused bool) {
	if !c.scopedForm(w, r, maxManageForm, db.ScopeAdmin, "manage webhooks", "webhooks") {
		return
	}
	id := webhookID(r)
	err := db.ErrNotFound
	if id != 0 {
		_, err = c.store.UpdateWebhook(r.Context(), id, db.WebhookPatch{Paused: &paused})
	}
	switch {
	case errors.Is(err, db.ErrNotFound):
		c.notFound(w, newView(r, "Webhook", "webhooks"), "No webhook has the id "+chi.URLParam(r, "id")+" (deleted meanwhile?). See the list of webhooks.")
		return
	case err != nil:
		v := newView(r, "Webhook", "webhooks")
		c.unavailable(w, r, &v, err)
		return
	}
	action := "resumed"
	if paused {
		action = "paused"
	}
	c.log.Info("webhook "+action+" from the console", "webhook", id, "by", session(r).Key.ID)
	to := "/webhooks/" + strconv.FormatInt(id, 10)
	if r.PostFormValue("from") == "list" {
		to = "/webhooks"
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}
