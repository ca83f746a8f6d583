package testsys

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// QueryCounter counts the queries whose SQL contains a string, as the pgx
// tracer of the pieces' pools: the database calls a test says a piece
// makes, or spares, are counted where they leave the process.
type QueryCounter struct {
	match string
	n     atomic.Int64
}

// CountQueries makes the pieces started after it count their queries whose
// SQL contains match.
func (s *System) CountQueries(match string) *QueryCounter {
	c := &QueryCounter{match: match}
	s.PoolOption = func(cfg *pgxpool.Config) { cfg.ConnConfig.Tracer = c }
	return c
}

// Count is how many matching queries were sent so far.
func (c *QueryCounter) Count() int64 { return c.n.Load() }

func (c *QueryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, c.match) {
		c.n.Add(1)
	}
	return ctx
}

func (c *QueryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
