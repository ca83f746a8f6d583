package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/switchboard-iot/switchboard/db"
)

// optBool is a boolean flag that knows whether it was given: -online
// lists online devices, -online=false offline ones, neither all.
type optBool struct{ v *bool }

func (o *optBool) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatBool(*o.v)
}

func (o *optBool) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	o.v = &b
	return nil
}

func (o *optBool) IsBoolFlag() bool { return true }

// listFlags are the flags of "devices list": filters, as GET /v1/devices
// has them.
type listFlags struct {
	manage                 manageFlags
	online                 *optBool
	node, region, label, q *string
	limit                  *int
}

func defineListFlags(f flags) listFlags {
	l := listFlags{manage: defineManageFlags(f), online: &optBool{}}
	f.Var(l.online, "online", "only online devices (-online=false: only offline ones)")
	l.node = f.String("node", "", "only devices connected to this node")
	l.region = f.String("region", "", "only devices in this region (their session's, or their last one's)")
	l.label = f.String("label", "", `only devices whose labels match this selector: "room=kitchen,fw!=2.1,beta,!old"`)
	l.q = f.String("q", "", "only devices whose id contains this, ignoring case")
	l.limit = f.Int("limit", 0, "list at most this many devices (0: all of them)")
	return l
}

func (l listFlags) filter() (db.DeviceFilter, error) {
	f := db.DeviceFilter{Online: l.online.v, Node: *l.node, Region: *l.region, IDContains: *l.q}
	if f.IDContains != "" && !db.ValidDeviceIDPart(f.IDContains) {
		return f, fmt.Errorf("-q %q: want part of a device id (letters, digits and \"._-\")", f.IDContains)
	}
	sel, err := db.ParseLabelSelector(*l.label)
	if err != nil {
		return f, fmt.Errorf("-label: %w", err)
	}
	f.Labels = sel
	if *l.limit < 0 {
		return f, fmt.Errorf("-limit %d: want 0 (all) or more", *l.limit)
	}
	return f, nil
}

// query is the filter as GET /v1/devices reads it.
func (l listFlags) query() url.Values {
	q := url.Values{"node": {*l.node}, "region": {*l.region}, "label": {*l.label}, "q": {*l.q}}
	if l.online.v != nil {
		q.Set("online", strconv.FormatBool(*l.online.v))
	}
	return q
}

// listDevices prints the devices the filters choose as a table, a page of
// the database (or of the API) at a time, then their counts on stderr.
func listDevices(ctx context.Context, l listFlags, c call) error {
	f, err := l.filter()
	if err != nil {
		return err
	}
	t := newDeviceTable(c.Stdout, *l.manage.api.json)
	var total, online int
	var more bool
	err = l.manage.onEdge(ctx, c, func(cl *client) error {
		last, left, err := cl.list(ctx, "/v1/devices", l.query(), "devices", db.MaxPage, *l.limit, t.addRaw)
		if err != nil {
			return err
		}
		_ = json.Unmarshal(last["total"], &total)
		_ = json.Unmarshal(last["online"], &online)
		more = left
		return nil
	}, func(store *db.Store) (err error) {
		total, online, more, err = storeDevices(ctx, store, f, *l.limit, t)
		return err
	})
	if err != nil {
		return err
	}
	if err := t.finish(c.Stderr, more, *l.limit); err != nil {
		return err
	}
	fmt.Fprintf(c.Stderr, "%d devices, %d online\n", total, online)
	return nil
}

func newDeviceTable(w io.Writer, asJSON bool) *table[db.Device] {
	return newTable(w, asJSON, []string{"ID", "ONLINE", "NODE", "REGION", "LABELS"}, func(d db.Device) []string {
		node := "-"
		if d.Presence != nil {
			node = d.Presence.NodeID
		}
		return []string{d.ID, strconv.FormatBool(d.Online), node, cmp.Or(d.Region, "-"), formatLabels(d.Labels)}
	})
}

// storeDevices adds the devices f chooses to t, at most limit (0: all),
// in keyset pages as the API reads them.
func storeDevices(ctx context.Context, store *db.Store, f db.DeviceFilter, limit int, t *table[db.Device]) (total, online int, more bool, err error) {
	var after string
	seen := 0
	for {
		n := db.MaxPage
		if limit > 0 {
			n = min(n, limit-seen)
		}
		page, err := store.ListDevices(ctx, f, after, n)
		if err != nil {
			return 0, 0, false, err
		}
		for _, d := range page.Devices {
			if err := t.add(d, nil); err != nil {
				return 0, 0, false, err
			}
		}
		seen += len(page.Devices)
		if !page.More || limit > 0 && seen >= limit {
			return page.Total, page.Online, page.More, nil
		}
		after = page.Devices[len(page.Devices)-1].ID
	}
}

// formatLabels writes labels as a selector would: "fw=2.1,room=kitchen",
// sorted by key; "-" for none.
func formatLabels(raw json.RawMessage) string {
	var labels map[string]string
	if err := json.Unmarshal(raw, &labels); err != nil || len(labels) == 0 {
		return "-"
	}
	var terms []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		terms = append(terms, k+"="+labels[k])
	}
	return strings.Join(terms, ",")
}

// labelChanges reads "devices label" arguments: key=value sets a label,
// key- deletes one (as kubectl label does: a leading "-" would read as a
// flag).
func labelChanges(args []string) (set map[string]string, remove []string, err error) {
	set = map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			if !db.ValidLabelKey(k) || !db.ValidLabelValue(v) {
				return nil, nil, fmt.Errorf("label %q: a key is 1-63 letters, digits and \"._-/\", a value at most 63 letters, digits and \"._-\", each starting and ending with a letter or digit", a)
			}
			set[k] = v
			continue
		}
		k, ok := strings.CutSuffix(a, "-")
		if !ok || !db.ValidLabelKey(k) {
			return nil, nil, fmt.Errorf("%q: want key=value to set a label, or key- to delete one", a)
		}
		remove = append(remove, k)
	}
	if len(set) > db.MaxLabels {
		return nil, nil, fmt.Errorf("at most %d labels", db.MaxLabels)
	}
	return set, remove, nil
}
