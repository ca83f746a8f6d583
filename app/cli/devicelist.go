package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

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
	store                  storeFlags
	online                 *optBool
	node, region, label, q *string
}

func defineListFlags(f flags) listFlags {
	l := listFlags{store: defineStoreFlags(f), online: &optBool{}}
	f.Var(l.online, "online", "only online devices (-online=false: only offline ones)")
	l.node = f.String("node", "", "only devices connected to this node")
	l.region = f.String("region", "", "only devices in this region (their session's, or their last one's)")
	l.label = f.String("label", "", `only devices whose labels match this selector: "room=kitchen,fw!=2.1,beta,!old"`)
	l.q = f.String("q", "", "only devices whose id contains this, ignoring case")
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
	return f, nil
}

// listDevices prints the devices the filters choose as a table, a page of
// the database at a time (keyset pages, as the API reads them), then their
// counts on stderr.
func listDevices(ctx context.Context, l listFlags, c call) error {
	f, err := l.filter()
	if err != nil {
		return err
	}
	return l.store.withStore(ctx, func(store *db.Store) error { return writeDevices(ctx, store, f, c.IO) })
}

func writeDevices(ctx context.Context, store *db.Store, f db.DeviceFilter, stdio IO) error {
	tw := tabwriter.NewWriter(stdio.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tONLINE\tNODE\tREGION\tLABELS")
	var after string
	var page db.DevicePage
	for {
		var err error
		if page, err = store.ListDevices(ctx, f, after, db.MaxPage); err != nil {
			return err
		}
		for _, d := range page.Devices {
			node := "-"
			if d.Presence != nil {
				node = d.Presence.NodeID
			}
			fmt.Fprintf(tw, "%s\t%t\t%s\t%s\t%s\n", d.ID, d.Online, node, cmp.Or(d.Region, "-"), formatLabels(d.Labels))
		}
		if !page.More {
			break
		}
		after = page.Devices[len(page.Devices)-1].ID
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdio.Stderr, "%d devices, %d online\n", page.Total, page.Online)
	return nil
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
