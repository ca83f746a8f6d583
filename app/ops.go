package app

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/httpsec"
)

// ServeOps has Run serve the process's operations endpoints on ln, plain
// HTTP: /healthz, /readyz with the reason notReady (an edge's or a node's
// NotReady) gives, the process's metrics at /metrics, and Go's profiles
// under /debug/pprof/. They are served until the process's
// parts have stopped, drain included: a node's /readyz says "draining"
// meanwhile, and its metrics show the drain. It is the one place metrics
// and profiles are served, for the operator's private network only, never
// the internet: they show what the process holds. Call it before Run.
func (p *Process) ServeOps(ln net.Listener, notReady func(context.Context) string) {
	p.ops = append(p.ops, p.opsServer(ln, notReady))
}

func (p *Process) opsServer(ln net.Listener, notReady func(context.Context) string) Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", httpsec.Health)
	mux.Handle("GET /readyz", httpsec.Readiness(notReady, true))
	mux.Handle("/metrics", promhttp.HandlerFor(p.Metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index) // heap, goroutine, allocs, block, mutex, threadcreate
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{
		Handler:           httpsec.Headers(mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(p.Log.Handler(), slog.LevelDebug),
	}
	return func(ctx context.Context) error {
		served := actors.Serve(srv, ln)
		p.Log.Info("ops serving", "addr", ln.Addr().String())
		select {
		case <-ctx.Done():
		case <-served.Done():
		}
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		return served.Wait()
	}
}
