package certs

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapLogger hands certmagic's zap logs to the process's slog logger, so a
// node logs one way. certmagic is chatty at info: its info goes to debug,
// except what an operator must see (obtaining, renewing, failing).
func zapLogger(log *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{log: log})
}

type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c *slogCore) Enabled(zapcore.Level) bool { return true }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(c.fields[:len(c.fields):len(c.fields)], fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(c.fields, fields...) {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields)+2)
	attrs = append(attrs, "component", "certmagic")
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	c.log.Log(context.Background(), level(e), e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

func level(e zapcore.Entry) slog.Level {
	switch {
	case e.Level >= zapcore.ErrorLevel:
		return slog.LevelError
	case e.Level == zapcore.WarnLevel:
		return slog.LevelWarn
	case e.Level == zapcore.InfoLevel && notable(e.Message):
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

// notable says which of certmagic's info lines an operator wants to see.
func notable(msg string) bool {
	switch msg {
	case "obtaining certificate", "certificate obtained successfully", "renewing certificate",
		"certificate renewed successfully", "lock acquired", "waiting on internal rate limiter":
		return true
	}
	return false
}
