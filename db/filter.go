package db

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Labels are a device's key/value tags (devices.labels), chosen by
// operators: `room=kitchen`, `fw=2.1`. Keys and values follow Kubernetes'
// label syntax, so a selector needs no quoting: a key is 1-63 characters
// of letters, digits and "._-/", starting and ending with a letter or
// digit; a value is empty or 1-63 of letters, digits and "._-", starting
// and ending with a letter or digit.
var (
	ValidLabelKey   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`).MatchString
	ValidLabelValue = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`).MatchString
)

// MaxLabels bounds the labels of one device and the requirements of one
// selector.
const MaxLabels = 64

// The label rules, as an error message says them.
const (
	LabelKeyFormat   = `a key is 1-63 letters, digits and "._-/", starting and ending with a letter or digit`
	LabelValueFormat = `a value is at most 63 letters, digits and "._-", starting and ending with a letter or digit`
)

// CheckLabels checks labels to store (the API's and the console's): keys,
// values, and n (the count the device would have) against MaxLabels.
func CheckLabels(labels map[string]string, n int) error {
	if n > MaxLabels {
		return fmt.Errorf("labels: at most %d", MaxLabels)
	}
	for k, v := range labels {
		if !ValidLabelKey(k) {
			return fmt.Errorf("label %q: %s", k, LabelKeyFormat)
		}
		if !ValidLabelValue(v) {
			return fmt.Errorf("label %s=%q: %s", k, v, LabelValueFormat)
		}
	}
	return nil
}

// LabelOp is how a requirement tests a label.
type LabelOp string

const (
	LabelEquals    LabelOp = "="  // key=value
	LabelNotEquals LabelOp = "!=" // key!=value (also true when the key is absent)
	LabelExists    LabelOp = ""   // key
	LabelAbsent    LabelOp = "!"  // !key
)

// LabelRequirement is one term of a selector.
type LabelRequirement struct {
	Key   string
	Op    LabelOp
	Value string
}

// LabelSelector is requirements that must all hold.
type LabelSelector []LabelRequirement

// ParseLabelSelector reads a selector: comma-separated terms `key=value`
// (or `key==value`), `key!=value`, `key` (has the label) and `!key` (has
// not), all of which must hold. An empty string selects every device.
func ParseLabelSelector(s string) (LabelSelector, error) {
	var sel LabelSelector
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for term := range strings.SplitSeq(s, ",") {
		term = strings.TrimSpace(term)
		var r LabelRequirement
		switch {
		case strings.HasPrefix(term, "!") && !strings.Contains(term, "="):
			r = LabelRequirement{Key: term[1:], Op: LabelAbsent}
		case strings.Contains(term, "!="):
			k, v, _ := strings.Cut(term, "!=")
			r = LabelRequirement{Key: k, Op: LabelNotEquals, Value: v}
		case strings.Contains(term, "="):
			k, v, _ := strings.Cut(term, "=")
			r = LabelRequirement{Key: k, Op: LabelEquals, Value: strings.TrimPrefix(v, "=")}
		default:
			r = LabelRequirement{Key: term, Op: LabelExists}
		}
		r.Key, r.Value = strings.TrimSpace(r.Key), strings.TrimSpace(r.Value)
		if !ValidLabelKey(r.Key) {
			return nil, fmt.Errorf("label selector term %q: the key must be 1-63 letters, digits or \"._-/\", starting and ending with a letter or digit", term)
		}
		if !ValidLabelValue(r.Value) {
			return nil, fmt.Errorf("label selector term %q: the value must be at most 63 letters, digits or \"._-\", starting and ending with a letter or digit", term)
		}
		sel = append(sel, r)
	}
	if len(sel) > MaxLabels {
		return nil, fmt.Errorf("label selector: at most %d terms", MaxLabels)
	}
	return sel, nil
}

// String writes the selector back in the form ParseLabelSelector reads.
func (sel LabelSelector) String() string {
	terms := make([]string, len(sel))
	for i, r := range sel {
		switch r.Op {
		case LabelAbsent:
			terms[i] = "!" + r.Key
		case LabelExists:
			terms[i] = r.Key
		default:
			terms[i] = r.Key + string(r.Op) + r.Value
		}
	}
	return strings.Join(terms, ",")
}

// DeviceFilter chooses devices, for listings and job targets. Zero fields
// do not filter.
type DeviceFilter struct {
	IDs    []string      // one of these ids
	Online *bool         // connected (a presence_live row) or not
	Node   string        // connected to this node
	Region string        // its session's region, or its last session's when offline
	Labels LabelSelector // all of these hold
	// IDContains keeps ids that contain it, ignoring case (a console's
	// search box; the devices_id_trgm index serves it).
	IDContains string
	// DeltaNonEmpty keeps devices whose desired state differs from their
	// reported state (a desired key not reported as desired).
	DeltaNonEmpty bool
}

// where is the filter as SQL over `devices d LEFT JOIN presence_live p ON
// p.device_id = d.id`, appending its parameters to args. Each term uses
// an index (the primary key, devices_region, devices_labels, or
// presence's) or a join with presence_live.
func (f DeviceFilter) where(args []any) (string, []any) {
	conds := []string{"true"}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.IDs != nil {
		conds = append(conds, "d.id = ANY("+arg(f.IDs)+"::text[])")
	}
	if f.Online != nil {
		if *f.Online {
			conds = append(conds, "p.device_id IS NOT NULL")
		} else {
			conds = append(conds, "p.device_id IS NULL")
		}
	}
	if f.Node != "" {
		conds = append(conds, "p.node_id = "+arg(f.Node))
	}
	if f.Region != "" {
		conds = append(conds, "coalesce(p.region, d.region) = "+arg(f.Region))
	}
	for _, r := range f.Labels {
		switch r.Op {
		case LabelEquals:
			doc, _ := json.Marshal(map[string]string{r.Key: r.Value})
			conds = append(conds, "d.labels @> "+arg(string(doc))+"::jsonb")
		case LabelNotEquals:
			doc, _ := json.Marshal(map[string]string{r.Key: r.Value})
			conds = append(conds, "NOT d.labels @> "+arg(string(doc))+"::jsonb")
		case LabelExists:
			conds = append(conds, "d.labels ? "+arg(r.Key))
		case LabelAbsent:
			conds = append(conds, "NOT d.labels ? "+arg(r.Key))
		}
	}
	if f.IDContains != "" {
		conds = append(conds, "d.id ILIKE "+arg("%"+likeEscaper.Replace(f.IDContains)+"%"))
	}
	if f.DeltaNonEmpty {
		conds = append(conds, `EXISTS (SELECT FROM device_state s WHERE s.device_id = d.id AND sb_state_delta(s.desired, s.reported) <> '{}')`)
	}
	return strings.Join(conds, " AND "), args
}

// likeEscaper makes a string match itself in a LIKE pattern (whose escape
// character is the backslash by default).
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// filteredDevices is the FROM clause DeviceFilter.where reads.
const filteredDevices = `devices d LEFT JOIN presence_live p ON p.device_id = d.id`

// Matches says whether labels meet every requirement: how a fleet event
// stream tests an event's device in memory, as where does in SQL.
func (sel LabelSelector) Matches(labels map[string]string) bool {
	for _, r := range sel {
		v, ok := labels[r.Key]
		switch r.Op {
		case LabelEquals:
			if !ok || v != r.Value {
				return false
			}
		case LabelNotEquals:
			if ok && v == r.Value {
				return false
			}
		case LabelExists:
			if !ok {
				return false
			}
		case LabelAbsent:
			if ok {
				return false
			}
		}
	}
	return true
}
