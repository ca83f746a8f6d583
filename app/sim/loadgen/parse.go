package loadgen

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ParseRate reads a rate such as "2000/s", "500/100ms", "90000/m" or a bare
// number (a second), and returns it per second.
func ParseRate(s string) (float64, error) {
	num, per, found := strings.Cut(strings.TrimSpace(s), "/")
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("rate %q: want a number of events per unit, such as 2000/s", s)
	}
	if !found {
		return n, nil
	}
	unit := time.Second
	switch per {
	case "s":
	case "m", "min":
		unit = time.Minute
	case "h":
		unit = time.Hour
	default:
		if unit, err = time.ParseDuration(per); err != nil || unit <= 0 {
			return 0, fmt.Errorf("rate %q: want a unit such as /s, /m or /100ms", s)
		}
	}
	return n / unit.Seconds(), nil
}

// maxSourceAddrs bounds an address range: a typo must not allocate millions.
const maxSourceAddrs = 1024

// ParseSourceAddrs reads comma-separated addresses and ranges, such as
// "127.0.0.2-127.0.0.9,127.0.1.1".
func ParseSourceAddrs(s string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		from, to, isRange := strings.Cut(part, "-")
		first, err := netip.ParseAddr(strings.TrimSpace(from))
		if err != nil {
			return nil, fmt.Errorf("source address %q: %w", part, err)
		}
		last := first
		if isRange {
			if last, err = netip.ParseAddr(strings.TrimSpace(to)); err != nil {
				return nil, fmt.Errorf("source address range %q: %w", part, err)
			}
			if last.BitLen() != first.BitLen() || last.Less(first) {
				return nil, fmt.Errorf("source address range %q: want a first address, then a later one of the same family", part)
			}
		}
		for a := first; ; a = a.Next() {
			if len(addrs) == maxSourceAddrs {
				return nil, fmt.Errorf("source addresses %q: more than %d", s, maxSourceAddrs)
			}
			addrs = append(addrs, a)
			if a == last {
				break
			}
		}
	}
	return addrs, nil
}
