package db_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// BenchmarkInsertEvents measures a node's events batch: the insert under
// the events lock, with each device's latest value and count, in one
// round trip. With several writers (several nodes) the lock makes their
// batches take turns: the figure to watch is events a second in all.
//
//	go test -run '^$' -bench InsertEvents -count 3 ./db/
func BenchmarkInsertEvents(b *testing.B) {
	ctx := context.Background()
	pool := dbtest.NewPool(b)
	store := db.NewStore(pool)
	const devices = 1000
	creds := make([]db.Credential, devices)
	for i := range creds {
		creds[i] = db.Credential{ID: fmt.Sprintf("dev-%d", i), SecretHash: secret.Hash(fmt.Sprint(i))}
	}
	if _, err := store.AddDevices(ctx, creds); err != nil {
		b.Fatal(err)
	}
	data := json.RawMessage(`{"celsius":20.7,"target":21.5,"mode":"heat"}`)
	for _, batch := range []int{10, 100} {
		for _, writers := range []int{1, 4} {
			b.Run(fmt.Sprintf("batch=%d/writers=%d", batch, writers), func(b *testing.B) {
				batches := make([][]db.DeviceEvent, writers)
				for w := range batches {
					for i := range batch {
						batches[w] = append(batches[w], db.DeviceEvent{
							DeviceID: fmt.Sprintf("dev-%d", (w*batch+i)%devices), Name: "telemetry", Data: data})
					}
				}
				b.ResetTimer()
				var wg sync.WaitGroup
				for w := range writers {
					wg.Go(func() {
						for i := w; i < b.N; i += writers {
							if _, err := store.InsertEvents(ctx, batches[w]); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}
