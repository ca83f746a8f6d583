package db_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device/protocol"
)

// Devices and clients learn that their JSON cannot be stored from
// protocol.CheckStorable, before it reaches a batch of other writes: it
// must refuse exactly what jsonb refuses, here around each of its limits.
func TestCheckStorableAgreesWithPostgreSQL(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewPool(t)
	ctx := context.Background()

	var texts []string
	for _, mantissa := range []string{"0", "1", "-1", "9.9", "10", "0.1", "1.0", "0.00001", "0.0"} {
		for _, exp := range []int{131070, 131071, 131072, -16382, -16383, -16384, 1073741822, 1073741823, -1073741822} {
			texts = append(texts, fmt.Sprintf("%se%d", mantissa, exp), fmt.Sprintf("[%sE%+d]", mantissa, exp))
		}
	}
	for _, n := range []int{16382, 16383, 16384} {
		texts = append(texts, "0."+strings.Repeat("0", n), "1."+strings.Repeat("5", n), "-0.5"+strings.Repeat("0", n-1))
	}
	for _, first := range []string{`\ud800`, `\udbff`, `\udc00`, `\udfff`, `\ud7ff`, `\ue000`, `\u0000`, `\u0001`, `x`, `\\`} {
		for _, second := range []string{``, `\udc00`, `\udfff`, `\ud800`, `\u0041`, `\n`, `\\udc00`} {
			texts = append(texts, `"`+first+second+`"`, `{"`+first+second+`":[]}`)
		}
	}
	for _, text := range texts {
		_, dbErr := pool.Exec(ctx, `SELECT $1::text::jsonb`, text)
		checkErr := protocol.CheckStorable([]byte(text))
		if (dbErr == nil) != (checkErr == nil) {
			t.Errorf("%.40s: PostgreSQL says %v, CheckStorable says %v", text, dbErr, checkErr)
		}
	}
}
