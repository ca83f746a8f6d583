package edge

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the HTTP API's OpenAPI 3.1 description, served at
// /v1/openapi.json. It is written by hand; TestOpenAPI keeps it true to
// the router and to the problem types.
//
//go:embed openapi.json
var OpenAPI []byte

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(OpenAPI)
}
