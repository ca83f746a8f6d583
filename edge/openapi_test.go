package edge_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/pb33f/libopenapi/datamodel"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/problem"
)

// openAPIDoc is the part of edge/openapi.json the test reads.
type openAPIDoc struct {
	OpenAPI      string                                `json:"openapi"`
	Paths        map[string]map[string]json.RawMessage `json:"paths"`
	ProblemTypes map[string]string                     `json:"x-problem-types"`
}

type openAPIOperation struct {
	Scope    string   `json:"x-scope"`
	Security []any    `json:"security"`
	Tags     []string `json:"tags"`
}

var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func readOpenAPI(t *testing.T) (openAPIDoc, any) {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(edge.OpenAPI, &doc); err != nil {
		t.Fatalf("edge/openapi.json is not JSON: %v", err)
	}
	var raw any
	if err := json.Unmarshal(edge.OpenAPI, &raw); err != nil {
		t.Fatal(err)
	}
	return doc, raw
}

// TestOpenAPI keeps edge/openapi.json true: valid OpenAPI 3.1, every
// route of the router documented and every documented route served, with
// the scope it needs, and every problem type of problem.All listed with
// its status. When it fails after adding a route or a problem type,
// describe it in edge/openapi.json.
func TestOpenAPI(t *testing.T) {
	t.Parallel()
	doc, raw := readOpenAPI(t)

	t.Run("valid OpenAPI 3.1", func(t *testing.T) {
		if !regexp.MustCompile(`^3\.1\.\d+$`).MatchString(doc.OpenAPI) {
			t.Errorf("openapi %q, want 3.1.x", doc.OpenAPI)
		}
		// The OpenAPI Initiative's schema of 3.1 documents, as libopenapi
		// embeds it (a module, not a copy kept here).
		c := jsonschema.NewCompiler()
		schemaDoc, err := jsonschema.UnmarshalJSON(strings.NewReader(datamodel.OpenAPI31SchemaData))
		if err != nil {
			t.Fatal(err)
		}
		const id = "https://spec.openapis.org/oas/3.1/schema/2022-10-07"
		if err := c.AddResource(id, schemaDoc); err != nil {
			t.Fatal(err)
		}
		sch, err := c.Compile(id)
		if err != nil {
			t.Fatal(err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(edge.OpenAPI))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("edge/openapi.json is not a valid OpenAPI 3.1 document: %v", err)
		}
		// Every local $ref points at something.
		walkJSON(raw, "#", func(at string, v map[string]any) {
			ref, ok := v["$ref"].(string)
			if !ok {
				return
			}
			if !strings.HasPrefix(ref, "#/") {
				t.Errorf("%s: $ref %q: want a local reference", at, ref)
				return
			}
			if resolvePointer(raw, ref) == nil {
				t.Errorf("%s: $ref %q points at nothing", at, ref)
			}
		})
		// The schemas of the documented examples, and the schema keywords,
		// are not checked by the OAS schema (it does not descend into
		// Schema Objects): at least every schema must compile.
		schemas, _ := resolvePointer(raw, "#/components/schemas").(map[string]any)
		for name := range schemas {
			c := jsonschema.NewCompiler()
			if err := c.AddResource("openapi.json", raw); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Compile("openapi.json#/components/schemas/" + name); err != nil {
				t.Errorf("components.schemas.%s does not compile as a JSON Schema: %v", name, err)
			}
		}
	})

	t.Run("routes", func(t *testing.T) {
		sys := testsys.New(t)
		e := sys.StartEdge(t, "edge-a", nil)
		routed := map[string]bool{} // "GET /v1/devices/{id}"
		err := chi.Walk(e.Handler().(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
			if strings.HasPrefix(route, "/v1/") {
				routed[method+" "+strings.TrimSuffix(route, "/")] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		documented := map[string]openAPIOperation{}
		for path, item := range doc.Paths {
			for method, opRaw := range item {
				if !slices.Contains(openAPIMethods, method) {
					continue // parameters, summary, …
				}
				var op openAPIOperation
				if err := json.Unmarshal(opRaw, &op); err != nil {
					t.Fatalf("paths.%s.%s: %v", path, method, err)
				}
				documented[strings.ToUpper(method)+" "+path] = op
			}
		}
		// chi and OpenAPI write path parameters alike ({id}).
		for _, r := range slices.Sorted(maps.Keys(routed)) {
			if _, ok := documented[r]; !ok {
				t.Errorf("route %s is served but not in edge/openapi.json: describe it under paths", r)
			}
		}
		for _, r := range slices.Sorted(maps.Keys(documented)) {
			if !routed[r] {
				t.Errorf("edge/openapi.json describes %s, which the router does not serve", r)
			}
		}
		if len(routed) == 0 {
			t.Fatal("chi.Walk found no /v1 route")
		}

		// Each operation says the scope it needs, and that is the scope the
		// router asks for: a key with every other scope gets 403 naming it,
		// and no key at all gets 401. The description itself needs none.
		sys.AddDevice(t, "dev-1")
		for _, r := range slices.Sorted(maps.Keys(documented)) {
			op := documented[r]
			method, path, _ := strings.Cut(r, " ")
			path = strings.ReplaceAll(path, "{id}", "dev-1")
			if strings.HasPrefix(r, "GET /v1/commands/") {
				path = strings.Replace(strings.ReplaceAll(r, "{id}", uuid.NewString()), "GET ", "", 1)
			}
			if op.Scope == "" {
				if len(op.Security) != 0 {
					t.Errorf("%s: no x-scope, but security %v", r, op.Security)
				}
				resp, body := newAPI(t, e.URL, "").call(method, path, "")
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%s without a key: %d %s; the document says it needs none", r, resp.StatusCode, body)
				}
				continue
			}
			if !slices.Contains(db.AllScopes, db.Scope(op.Scope)) {
				t.Errorf("%s: x-scope %q, want one of %v", r, op.Scope, db.AllScopes)
				continue
			}
			resp, body := newAPI(t, e.URL, "").call(method, path, "")
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s without a key: %d %s, want 401", r, resp.StatusCode, body)
			}
			var others []db.Scope
			for _, s := range db.AllScopes {
				if string(s) != op.Scope {
					others = append(others, s)
				}
			}
			resp, body = newAPI(t, e.URL, sys.APIKey(t, others...)).call(method, path, "")
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Header.Get("WWW-Authenticate"), strconv.Quote(op.Scope)) {
				t.Errorf("%s with a key of %v: %d (%s) %s; the document says it needs the scope %q",
					r, others, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body, op.Scope)
			}
		}

		// Every route answers 400 (invalid-path or invalid-query, as the
		// document says of every route) to a query PostgreSQL cannot store,
		// before it reads anything else, with any key or none.
		admin := newAPI(t, e.URL, sys.APIKey(t))
		for _, r := range slices.Sorted(maps.Keys(documented)) {
			method, path, _ := strings.Cut(r, " ")
			path = strings.ReplaceAll(path, "{id}", "dev-1")
			resp, body := admin.call(method, path+"?x=%00", "")
			wantProblem(t, resp, body, http.StatusBadRequest, "invalid-query")
		}

		// Served as it is embedded, to anyone.
		resp, body := newAPI(t, e.URL, "").call(http.MethodGet, "/v1/openapi.json", "")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" || !bytes.Equal(body, edge.OpenAPI) {
			t.Errorf("GET /v1/openapi.json: %d %q, want 200 application/json and the embedded document", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	})

	t.Run("license", func(t *testing.T) {
		// Generators and linters want to know where the terms are.
		if u, _ := resolvePointer(raw, "#/info/license/url").(string); !strings.HasPrefix(u, "https://") {
			t.Errorf("info.license.url is %q, want an https URL", u)
		}
	})

	t.Run("problem answers", func(t *testing.T) {
		// Each operation declares the problems it can answer, each as
		// problem+json of the Problem schema: 400 for every route (a path
		// or query PostgreSQL cannot store), 401, 403, 429 and 503 for
		// every route behind a key, 404 for a route with an {id}, 408 and
		// 413 for one that reads a body.
		for path, item := range doc.Paths {
			for method, opRaw := range item {
				if !slices.Contains(openAPIMethods, method) {
					continue
				}
				var op struct {
					openAPIOperation
					RequestBody any                        `json:"requestBody"`
					Responses   map[string]json.RawMessage `json:"responses"`
				}
				if err := json.Unmarshal(opRaw, &op); err != nil {
					t.Fatal(err)
				}
				want := []string{"400"}
				if op.Scope != "" {
					want = append(want, "401", "403", "429", "503")
				}
				if strings.Contains(path, "{") {
					want = append(want, "404")
				}
				if op.RequestBody != nil {
					want = append(want, "408", "413")
				}
				at := "#/paths/" + strings.ReplaceAll(path, "/", "~1") + "/" + method + "/responses/"
				for _, status := range want {
					if op.Responses[status] == nil {
						t.Errorf("%s %s declares no %s answer", strings.ToUpper(method), path, status)
					}
				}
				for status := range op.Responses {
					if status[0] != '4' && status[0] != '5' {
						continue
					}
					resp, _ := resolvePointer(raw, at+status).(map[string]any)
					if ref, ok := resp["$ref"].(string); ok {
						resp, _ = resolvePointer(raw, ref).(map[string]any)
					}
					ref, _ := resolvePointer(resp, "#/content/application~1problem+json/schema/$ref").(string)
					if ref != "#/components/schemas/Problem" {
						t.Errorf("%s %s: the %s answer is not application/problem+json of the Problem schema", strings.ToUpper(method), path, status)
					}
				}
			}
		}
	})

	t.Run("free JSON", func(t *testing.T) {
		// An object schema without properties is free JSON (args): it says
		// so (additionalProperties), or generated clients close it
		// (openapi-typescript makes it Record<string, never>).
		walkJSON(raw, "#", func(at string, v map[string]any) {
			if v["type"] != "object" || strings.Contains(at, "/x-") {
				return
			}
			for _, k := range []string{"properties", "additionalProperties", "patternProperties", "oneOf", "anyOf", "allOf"} {
				if v[k] != nil {
					return
				}
			}
			t.Errorf("%s: an object schema with no properties: say additionalProperties: true (free JSON) or list them", at)
		})
	})

	t.Run("lists page alike", func(t *testing.T) {
		// An answer with a "next" is a listing: it takes the shared
		// limit and cursor, and every route that takes them answers one.
		for path, item := range doc.Paths {
			for method, opRaw := range item {
				if !slices.Contains(openAPIMethods, method) {
					continue
				}
				var op struct {
					Parameters []struct {
						Ref  string `json:"$ref"`
						Name string `json:"name"`
					} `json:"parameters"`
				}
				if err := json.Unmarshal(opRaw, &op); err != nil {
					t.Fatal(err)
				}
				at := "#/paths/" + strings.ReplaceAll(path, "/", "~1") + "/" + method + "/responses/200/content/application~1json/schema"
				schema, _ := resolvePointer(raw, at).(map[string]any)
				if ref, ok := schema["$ref"].(string); ok {
					schema, _ = resolvePointer(raw, ref).(map[string]any)
				}
				lists := resolvePointer(schema, "#/properties/next") != nil
				var refs []string
				for _, p := range op.Parameters {
					refs = append(refs, p.Ref)
					if p.Name == "limit" || p.Name == "cursor" {
						t.Errorf("%s %s: its own %s parameter; use #/components/parameters/Limit and Cursor", strings.ToUpper(method), path, p.Name)
					}
				}
				takes := slices.Contains(refs, "#/components/parameters/Limit") && slices.Contains(refs, "#/components/parameters/Cursor")
				if lists != takes {
					t.Errorf("%s %s: answers a next: %v, takes Limit and Cursor: %v; a listing does both", strings.ToUpper(method), path, lists, takes)
				}
			}
		}
	})

	t.Run("problem types", func(t *testing.T) {
		// x-problem-types lists problem.All, no more and no less, each
		// as "<when it is sent> (<status>[, <headers>])".
		listed := regexp.MustCompile(`^(.+) \((\d{3})((?:, [A-Za-z-]+)*)\)$`)
		declared := map[string]problem.Type{} // by slug
		for _, pt := range problem.All() {
			declared[pt.Slug()] = pt
			d, ok := doc.ProblemTypes[pt.URI()]
			if !ok {
				t.Errorf("problem type %s is in problem.All but not in edge/openapi.json's x-problem-types", pt.URI())
				continue
			}
			m := listed.FindStringSubmatch(d)
			if m == nil || m[1] != pt.About() || m[2] != strconv.Itoa(pt.Status()) {
				t.Errorf("x-problem-types[%s] is %q, want %q followed by (%d…)", pt.URI(), d, pt.About(), pt.Status())
			}
		}
		for _, uri := range slices.Sorted(maps.Keys(doc.ProblemTypes)) {
			if _, ok := declared[strings.TrimPrefix(uri, problem.Base)]; !ok || !strings.HasPrefix(uri, problem.Base) {
				t.Errorf("edge/openapi.json's x-problem-types lists %s, which is not in problem.All", uri)
			}
		}
		// Responses name their types ("Types: `invalid-query`, …"): each
		// is declared, and sent with the status of the response (or of
		// every operation's response that refers to it).
		statuses := map[string][]string{} // of responses, by pointer
		walkJSON(raw, "#", func(at string, v map[string]any) {
			before, status, ok := strings.Cut(at, "/responses/")
			if !ok || !strings.HasPrefix(before, "#/paths/") || !regexp.MustCompile(`^\d{3}$`).MatchString(status) {
				return
			}
			if ref, ok := v["$ref"].(string); ok {
				at = ref
			}
			if !slices.Contains(statuses[at], status) {
				statuses[at] = append(statuses[at], status)
			}
		})
		mention := regexp.MustCompile("`([a-z-]+)`")
		walkJSON(raw, "#", func(at string, v map[string]any) {
			d, _ := v["description"].(string)
			_, list, ok := strings.Cut(d, "Types: ")
			if !ok || v["content"] == nil {
				return
			}
			for _, m := range mention.FindAllStringSubmatch(list, -1) {
				pt, ok := declared[m[1]]
				if !ok {
					t.Errorf("%s names the problem type %q, which is not in problem.All", at, m[1])
					continue
				}
				for _, status := range statuses[at] {
					if status != strconv.Itoa(pt.Status()) {
						t.Errorf("%s, a %s response, names the problem type %q, which is sent with %d", at, status, m[1], pt.Status())
					}
				}
			}
		})
	})
}

// walkJSON calls fn on every object in v, with its JSON pointer.
func walkJSON(v any, at string, fn func(at string, obj map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		fn(at, v)
		for k, x := range v {
			walkJSON(x, at+"/"+strings.NewReplacer("~", "~0", "/", "~1").Replace(k), fn)
		}
	case []any:
		for i, x := range v {
			walkJSON(x, fmt.Sprintf("%s/%d", at, i), fn)
		}
	}
}

// resolvePointer follows a local JSON pointer ("#/a/b"); nil if nothing
// is there.
func resolvePointer(v any, ref string) any {
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		part = strings.NewReplacer("~1", "/", "~0", "~").Replace(part)
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		if v, ok = obj[part]; !ok {
			return nil
		}
	}
	return v
}
