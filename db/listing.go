package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// deviceColumns are what a Device is read from, over filteredDevices
// (scanDevice reads them in this order).
const deviceColumns = `d.id, d.labels, d.created_at, d.last_seen_at, d.disabled_at, coalesce(p.region, d.region),
	p.node_id, p.session_id, p.remote_addr, p.connected_at`

// scanDevice reads deviceColumns.
func scanDevice(row pgx.CollectableRow) (Device, error) {
	var d Device
	var p struct {
		NodeID, RemoteAddr *string
		SessionID          *uuid.UUID
		ConnectedAt        *time.Time
	}
	var region *string
	if err := row.Scan(&d.ID, &d.Labels, &d.CreatedAt, &d.LastSeenAt, &d.DisabledAt, &region,
		&p.NodeID, &p.SessionID, &p.RemoteAddr, &p.ConnectedAt); err != nil {
		return Device{}, err
	}
	if region != nil {
		d.Region = *region
	}
	if p.NodeID != nil {
		d.Online = true
		d.Presence = &Presence{NodeID: *p.NodeID, Region: d.Region, SessionID: *p.SessionID,
			RemoteAddr: *p.RemoteAddr, ConnectedAt: *p.ConnectedAt}
	}
	return d, nil
}

// DevicePage is one page of a listing, with counts over all its pages.
type DevicePage struct {
	Devices []Device
	More    bool // devices after the last one match too
	Total   int  // devices that match the filter
	Online  int  // of those, online
}

// MaxPage bounds a listing's page.
const MaxPage = 1000

// ListDevices returns up to limit devices that match f, in id order,
// after the id after (keyset pagination: no OFFSET, so a page costs the
// same wherever it is, and a device added or removed meanwhile shifts
// nothing), with the counts of every device that matches. The page and
// the counts go in one round trip; the counts read the same indexes as
// the filter (a filter-less count reads the primary key, or presence for
// online=true).
func (s *Store) ListDevices(ctx context.Context, f DeviceFilter, after string, limit int) (DevicePage, error) {
	if limit < 1 || limit > MaxPage {
		return DevicePage{}, fmt.Errorf("list devices: limit %d: %w", limit, ErrInvalid)
	}
	ctx, cancel := bound(ctx)
	defer cancel()
	where, args := f.where(nil)
	pageWhere := where
	if after != "" {
		args = append(args, after)
		pageWhere += " AND d.id > $" + strconv.Itoa(len(args))
	}
	// One more than the page tells whether another page follows.
	args = append(args, limit+1)
	var b pgx.Batch
	var page DevicePage
	b.Queue(`SELECT `+deviceColumns+` FROM `+filteredDevices+` WHERE `+pageWhere+
		` ORDER BY d.id LIMIT $`+strconv.Itoa(len(args)), args...).
		Query(func(rows pgx.Rows) error {
			var err error
			page.Devices, err = pgx.CollectRows(rows, scanDevice)
			return err
		})
	_, countArgs := f.where(nil)
	b.Queue(`SELECT count(*), count(p.device_id) FROM `+filteredDevices+` WHERE `+where, countArgs...).
		QueryRow(func(row pgx.Row) error { return row.Scan(&page.Total, &page.Online) })
	if err := s.db.SendBatch(ctx, &b).Close(); err != nil {
		return DevicePage{}, translate(err, "list devices")
	}
	if len(page.Devices) > limit {
		page.Devices, page.More = page.Devices[:limit], true
	}
	return page, nil
}

// PatchLabels applies a JSON merge patch (RFC 7396) to a device's labels:
// set holds the keys to set, remove the keys to delete (a null in the
// patch); clear first empties them (a patch of "labels": null). It is one
// statement, so concurrent patches of different keys all apply. A result
// with more than MaxLabels labels is refused (ErrTooManyLabels) and
// changes nothing. It returns the device as Device does.
func (s *Store) PatchLabels(ctx context.Context, id string, clear bool, set map[string]string, remove []string) (Device, error) {
	ctx, cancel := bound(ctx)
	defer cancel()
	if set == nil {
		set = map[string]string{}
	}
	doc, err := json.Marshal(set)
	if err != nil {
		return Device{}, err
	}
	if remove == nil {
		remove = []string{}
	}
	// A plain UPDATE: PostgreSQL computes the new labels from the row
	// version it locks (a concurrent patch waits, and this one applies to
	// its result), so no patch is lost.
	rows, err := s.db.Query(ctx, `
		WITH u AS (
			UPDATE devices SET labels = (CASE WHEN $2 THEN '{}'::jsonb ELSE labels END || $3::jsonb) - $4::text[]
			WHERE id = $1 AND (SELECT count(*) FROM jsonb_object_keys(
				(CASE WHEN $2 THEN '{}'::jsonb ELSE labels END || $3::jsonb) - $4::text[])) <= $5
			RETURNING *)
		SELECT `+deviceColumns+` FROM u d LEFT JOIN presence_live p ON p.device_id = d.id`,
		id, clear, string(doc), remove, MaxLabels)
	if err != nil {
		return Device{}, translate(err, "device "+id)
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDevice)
	if errors.Is(err, pgx.ErrNoRows) {
		// Unknown, or the patch would leave too many labels: tell which.
		exists, err := s.DeviceExists(ctx, id)
		if err != nil {
			return Device{}, err
		}
		if exists {
			return Device{}, ErrTooManyLabels
		}
	}
	return d, translate(err, "device "+id)
}

// ErrTooManyLabels is a label patch whose result would hold more than
// MaxLabels labels.
var ErrTooManyLabels = fmt.Errorf("a device has at most %d labels: %w", MaxLabels, ErrInvalid)
