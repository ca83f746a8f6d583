package edge

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/webhook"
)

// Webhooks over HTTP (scope admin): endpoints that are sent, signed, the
// events they ask for (docs/api.md, "Webhooks"). The deliveries are
// written by the database's triggers and sent by maintenance.

// maxWebhookNames bounds device.event's names filter.
const maxWebhookNames = 100

// webhookRequest is the body of POST and PATCH /v1/webhooks.
type webhookRequest struct {
	URL    *string   `json:"url"`
	Events *[]string `json:"events"`
	Names  *[]string `json:"names"`
	Paused *bool     `json:"paused"`
}

// check validates what r gives; create requires url and events. On
// failure it has answered 400.
func (e *Edge) checkWebhook(w http.ResponseWriter, r *webhookRequest, create bool) bool {
	bad := func(detail string) bool { problem.InvalidWebhook.Write(w, detail); return false }
	if create && (r.URL == nil || r.Events == nil) {
		return bad("url and events are required")
	}
	if r.URL != nil {
		*r.URL = strings.TrimSpace(*r.URL)
		if err := webhook.CheckURL(*r.URL, webhook.Options{AllowHTTP: e.cfg.WebhooksAllowHTTP, AllowPrivate: e.cfg.WebhooksAllowPrivate}); err != nil {
			return bad("url: " + err.Error())
		}
	}
	if r.Events != nil {
		if len(*r.Events) == 0 {
			return bad("events: want at least one of " + strings.Join(db.WebhookEvents, ", "))
		}
		for _, ev := range *r.Events {
			if !slices.Contains(db.WebhookEvents, ev) {
				return bad(fmt.Sprintf("events: unknown event type %q: want %s", ev, strings.Join(db.WebhookEvents, ", ")))
			}
		}
		slices.Sort(*r.Events)
		*r.Events = slices.Compact(*r.Events)
	}
	if r.Names != nil {
		if len(*r.Names) > maxWebhookNames {
			return bad(fmt.Sprintf("names: at most %d", maxWebhookNames))
		}
		for _, n := range *r.Names {
			if n == "" || len(n) > 128 || strings.ContainsFunc(n, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
				return bad(fmt.Sprintf("names: %q is not an event name (1 to 128 bytes, no control characters)", n))
			}
		}
		slices.Sort(*r.Names)
		*r.Names = slices.Compact(*r.Names)
	}
	return true
}

// newWebhook is the answer of POST /v1/webhooks: the endpoint and its
// signing secret, shown this once.
type newWebhook struct {
	db.Webhook
	Secret string `json:"secret"`
}

// handleCreateWebhook creates an endpoint: {"url","events","names"}.
func (e *Edge) handleCreateWebhook(w http.ResponseWriter, r *http.Request) {
	var req webhookRequest
	if !decodeJSON(w, r, &req) || !e.checkWebhook(w, &req, true) {
		return
	}
	if req.Paused != nil {
		problem.InvalidWebhook.Write(w, "paused: a new webhook is active; pause it with PATCH")
		return
	}
	names := []string{}
	if req.Names != nil {
		names = *req.Names
	}
	secret := webhook.NewSecret()
	wh, err := e.store.CreateWebhook(r.Context(), *req.URL, *req.Events, names, secret)
	if err != nil {
		e.unavailable(w, "creating a webhook", err)
		return
	}
	e.log.Info("webhook created", "webhook", wh.ID, "url", wh.URL, "by", apiKey(r).ID)
	w.Header().Set("Location", "/v1/webhooks/"+strconv.FormatInt(wh.ID, 10))
	writeJSON(w, http.StatusCreated, newWebhook{Webhook: wh, Secret: secret})
}

var webhookListParams = []string{"limit", "cursor"}

var webhookCursorDigest = listDigest("webhooks")

// handleListWebhooks lists the endpoints, oldest first (readPage).
func (e *Edge) handleListWebhooks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !allowQuery(w, q, webhookListParams) {
		return
	}
	limit, after, ok := readPageInt(w, q, webhookCursorDigest)
	if !ok {
		return
	}
	list, more, err := e.store.ListWebhooks(r.Context(), after, limit)
	if err != nil {
		e.unavailable(w, "listing webhooks", err)
		return
	}
	out := struct {
		Webhooks []db.Webhook `json:"webhooks"`
		Next     string       `json:"next,omitempty"` // absent on the last page
	}{Webhooks: list}
	out.Webhooks = orEmpty(out.Webhooks)
	if more {
		out.Next = encodeCursor(webhookCursorDigest, strconv.FormatInt(list[len(list)-1].ID, 10))
	}
	writeJSON(w, http.StatusOK, out)
}

// webhookID reads the {id} of a webhook route; on failure it has answered
// 404.
func webhookID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil || id < 1 {
		problem.WebhookNotFound.Write(w, "no webhook has the id "+strconv.Quote(chi.URLParam(r, "id")))
		return 0, false
	}
	return id, true
}

// webhookFailed answers a store error of a webhook route.
func (e *Edge) webhookFailed(w http.ResponseWriter, id int64, doing string, err error) {
	if errors.Is(err, db.ErrNotFound) {
		problem.WebhookNotFound.Write(w, fmt.Sprintf("no webhook has the id %d", id))
		return
	}
	e.unavailable(w, doing, err)
}

func (e *Edge) handleGetWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := webhookID(w, r)
	if !ok {
		return
	}
	wh, err := e.store.GetWebhook(r.Context(), id)
	if err != nil {
		e.webhookFailed(w, id, "reading a webhook", err)
		return
	}
	writeJSON(w, http.StatusOK, wh)
}

// handlePatchWebhook changes an endpoint's url, events, names or paused;
// {"paused":false} also enables one that was disabled.
func (e *Edge) handlePatchWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := webhookID(w, r)
	if !ok {
		return
	}
	var req webhookRequest
	if !decodeJSON(w, r, &req) || !e.checkWebhook(w, &req, false) {
		return
	}
	if req.URL == nil && req.Events == nil && req.Names == nil && req.Paused == nil {
		problem.InvalidWebhook.Write(w, "nothing to change: give url, events, names or paused")
		return
	}
	wh, err := e.store.UpdateWebhook(r.Context(), id, db.WebhookPatch{URL: req.URL, Events: req.Events, Names: req.Names, Paused: req.Paused})
	if err != nil {
		e.webhookFailed(w, id, "updating a webhook", err)
		return
	}
	e.log.Info("webhook changed", "webhook", id, "by", apiKey(r).ID)
	writeJSON(w, http.StatusOK, wh)
}

// handleDeleteWebhook deletes an endpoint and its deliveries: nothing
// more is sent to it.
func (e *Edge) handleDeleteWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := webhookID(w, r)
	if !ok {
		return
	}
	if err := e.store.DeleteWebhook(r.Context(), id); err != nil {
		e.webhookFailed(w, id, "deleting a webhook", err)
		return
	}
	e.log.Info("webhook deleted", "webhook", id, "by", apiKey(r).ID)
	w.WriteHeader(http.StatusNoContent)
}

var webhookDeliveryParams = []string{"limit", "cursor"}

// handleWebhookDeliveries lists an endpoint's deliveries, newest first
// (readPage).
func (e *Edge) handleWebhookDeliveries(w http.ResponseWriter, r *http.Request) {
	id, ok := webhookID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	if !allowQuery(w, q, webhookDeliveryParams) {
		return
	}
	digest := listDigest("webhook-deliveries", strconv.FormatInt(id, 10))
	limit, before, ok := readPageInt(w, q, digest)
	if !ok {
		return
	}
	list, more, err := e.store.ListWebhookDeliveries(r.Context(), id, before, limit)
	if err != nil {
		e.webhookFailed(w, id, "listing webhook deliveries", err)
		return
	}
	out := struct {
		Deliveries []db.WebhookDelivery `json:"deliveries"`
		Next       string               `json:"next,omitempty"` // absent on the last page
	}{Deliveries: list}
	out.Deliveries = orEmpty(out.Deliveries)
	if more {
		out.Next = encodeCursor(digest, strconv.FormatInt(list[len(list)-1].ID, 10))
	}
	writeJSON(w, http.StatusOK, out)
}
