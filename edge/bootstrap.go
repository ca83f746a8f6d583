package edge

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// The first admin key of a deployment, without a shell or psql: the
// operator makes a key where they are, gives the deployment only its
// SHA-256 (Config.BootstrapKeySHA256, a secret such as
// SWITCHBOARD_BOOTSTRAP_KEY_SHA256), and every edge stores that key, with
// every scope, when it starts, unless a key has that hash already. So it
// is made once, and once revoked it stays revoked, whatever edges start
// later. The key itself never reaches the deployment's secrets or logs.

// bootstrap is an edge's bootstrap key, if it was given one.
type bootstrap struct {
	hash   []byte      // nil: none given
	stored atomic.Bool // the key is in the database (or none was given)
}

// newBootstrap reads the hex SHA-256 of the bootstrap key ("": none).
func newBootstrap(sha256Hex string) (*bootstrap, error) {
	b := &bootstrap{}
	if sha256Hex == "" {
		b.stored.Store(true)
		return b, nil
	}
	hash, err := hex.DecodeString(strings.TrimSpace(sha256Hex))
	if err != nil || len(hash) != 32 {
		return nil, fmt.Errorf("bootstrap key SHA-256 %q: want 64 hex digits, the SHA-256 of the key (printf %%s \"$KEY\" | sha256sum)", sha256Hex)
	}
	b.hash = hash
	return b, nil
}

// storeBootstrapKey stores the bootstrap key, retrying while the database
// is away (the edge says it is not ready until then), then waits for ctx
// to end: it is one of the edge's background actors.
func (e *Edge) storeBootstrapKey(ctx context.Context) error {
	if e.bootstrap.hash != nil {
		err := backoff.Retry(ctx, backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}, func(ctx context.Context) error {
			k, created, err := e.store.AddBootstrapKey(ctx, e.bootstrap.hash)
			switch {
			case err != nil:
				return err
			case created:
				e.log.Info("bootstrap API key stored, with every scope: make your own keys with it, then revoke it", "key", k.ID)
			case k.RevokedAt != nil:
				e.log.Info("the bootstrap API key was revoked; its SHA-256 can go from the deployment's secrets", "key", k.ID)
			default:
				e.log.Info("bootstrap API key present", "key", k.ID, "name", k.Name)
			}
			return nil
		}, func(err error, wait time.Duration) {
			e.log.Warn("storing the bootstrap API key; retrying", "err", err, "in", wait)
		})
		if err != nil {
			return nil // ctx ended first
		}
		e.bootstrap.stored.Store(true)
	}
	<-ctx.Done()
	return nil
}
