package db_test

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/db/dbtest"
)

// certmagic's storage contract: files at slash-separated keys, directories
// implied by prefixes, fs.ErrNotExist for what is not there.
func TestCertStorageContract(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := db.NewCertStorage(dbtest.NewPool(t))

	if _, err := s.Load(ctx, "acme/account.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	if _, err := s.Stat(ctx, "acme"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat of a missing key: %v, want fs.ErrNotExist", err)
	}
	if _, err := s.List(ctx, "certificates", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List of a missing directory: %v, want fs.ErrNotExist", err)
	}
	if err := s.Delete(ctx, "nothing/here"); err != nil {
		t.Fatalf("Delete of a missing key: %v, want nil", err)
	}

	files := map[string]string{
		"certificates/ca/conn.example.com/conn.example.com.crt":   "crt",
		"certificates/ca/conn.example.com/conn.example.com.key":   "key",
		"certificates/ca/conn.example.com/conn.example.com.json":  "{}",
		"certificates/ca/other.example.com/other.example.com.crt": "crt2",
		"acme/ca/users/ops@example.com/ops.json":                  "account",
	}
	for key, value := range files {
		if err := s.Store(ctx, key, []byte(value)); err != nil {
			t.Fatal(err)
		}
	}
	// Store overwrites.
	if err := s.Store(ctx, "certificates/ca/conn.example.com/conn.example.com.crt", []byte("renewed")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, "certificates/ca/conn.example.com/conn.example.com.crt"); err != nil || string(got) != "renewed" {
		t.Fatalf("Load after overwrite: %q, %v", got, err)
	}

	for key, want := range map[string]bool{
		"certificates": true, "certificates/ca": true, "certificates/ca/conn.example.com/conn.example.com.key": true,
		"certificates/c": false, "certificates/ca/conn.example": false, "acme/ca/users/ops@example.com": true, "zzz": false,
	} {
		if got := s.Exists(ctx, key); got != want {
			t.Errorf("Exists(%q) = %v, want %v", key, got, want)
		}
	}

	info, err := s.Stat(ctx, "certificates/ca/conn.example.com/conn.example.com.crt")
	if err != nil || !info.IsTerminal || info.Size != int64(len("renewed")) || time.Since(info.Modified) > time.Minute {
		t.Fatalf("Stat of a file: %+v, %v", info, err)
	}
	if info, err := s.Stat(ctx, "certificates/ca"); err != nil || info.IsTerminal {
		t.Fatalf("Stat of a directory: %+v, %v", info, err)
	}

	list := func(prefix string, recursive bool) []string {
		t.Helper()
		keys, err := s.List(ctx, prefix, recursive)
		if err != nil {
			t.Fatalf("List(%q, %v): %v", prefix, recursive, err)
		}
		return keys
	}
	if got, want := list("certificates/ca", false), []string{
		"certificates/ca/conn.example.com", "certificates/ca/other.example.com",
	}; !slices.Equal(got, want) {
		t.Errorf("List non-recursive = %v, want %v", got, want)
	}
	if got, want := list("certificates", true), []string{
		"certificates/ca",
		"certificates/ca/conn.example.com",
		"certificates/ca/conn.example.com/conn.example.com.crt",
		"certificates/ca/conn.example.com/conn.example.com.json",
		"certificates/ca/conn.example.com/conn.example.com.key",
		"certificates/ca/other.example.com",
		"certificates/ca/other.example.com/other.example.com.crt",
	}; !slices.Equal(got, want) {
		t.Errorf("List recursive = %v, want %v", got, want)
	}
	if got, want := list("", false), []string{"acme", "certificates"}; !slices.Equal(got, want) {
		t.Errorf("List of the root = %v, want %v", got, want)
	}

	// Deleting a directory deletes what is under it, and only that.
	if err := s.Delete(ctx, "certificates/ca/conn.example.com"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "certificates/ca/conn.example.com/conn.example.com.key") || !s.Exists(ctx, "certificates/ca/other.example.com") {
		t.Fatal("Delete of a directory removed the wrong keys")
	}
	if err := s.Delete(ctx, "acme/ca/users/ops@example.com/ops.json"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "acme") {
		t.Fatal("a directory outlived its last file")
	}
}

// Locks block across processes (here: stores with pools of their own), are
// exclusive, and are released when their holder's connection dies.
func TestCertStorageLocks(t *testing.T) {
	t.Parallel()
	url := dbtest.NewDatabase(t)
	a := db.NewCertStorage(dbtest.Pool(t, url))
	b := db.NewCertStorage(dbtest.Pool(t, url))
	ctx := context.Background()

	if err := a.Lock(ctx, "issue_cert_conn.example.com"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := b.Lock(short, "issue_cert_conn.example.com")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second Lock of a held name: %v, want it to block until its context ends", err)
	}
	if err := b.Lock(ctx, "issue_cert_other.example.com"); err != nil {
		t.Fatalf("another name: %v", err)
	}
	if err := b.Unlock(ctx, "issue_cert_other.example.com"); err != nil {
		t.Fatal(err)
	}

	// Unlock lets a waiter in.
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "issue_cert_conn.example.com") }()
	if err := a.Unlock(ctx, "issue_cert_conn.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}

	// The holder dies (its connection is cut): the lock is free again.
	pool := dbtest.Pool(t, url)
	var killed int
	if err := pool.QueryRow(ctx, `
		SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND classid = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		0x53426364).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d lock holders (%v), want 1", killed, err)
	}
	if err := a.Lock(ctx, "issue_cert_conn.example.com"); err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
	if err := a.Unlock(ctx, "issue_cert_conn.example.com"); err != nil {
		t.Fatal(err)
	}
	_ = b.Unlock(ctx, "issue_cert_conn.example.com") // its connection is gone: an error, or nil

	// Many holders, two processes: never two at once.
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			if err := s.Lock(ctx, "critical"); err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			inside.Add(-1)
			if err := s.Unlock(ctx, "critical"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders of one lock at once", most.Load())
	}
}
