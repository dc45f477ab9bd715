package webhooker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// API is the management API of webhook endpoints. It needs only the endpoint store, so any
// process that follows the WEBHOOKS bucket (the gateway, the webhooker alone) can serve it.
//
// The repair routes (api_repair.go, replay.go) send to endpoints from the process that
// serves them, through a Service that does not run: the same sender, signer, SSRF guard,
// filters and delivery records as the workers, without a consumer.
type API struct {
	endpoints *Endpoints
	svc       *Service
	svcErr    error // why svc could not be made: the repair routes answer 500 with it
}

// NewAPI returns the API over an endpoint store, with the store's settings. The repair
// routes' metrics (request latency, dropped records) are kept apart from the workers' (a
// process may run both on one registry, whose series the workers own) and are not exported.
func NewAPI(endpoints *Endpoints) *API {
	a := &API{endpoints: endpoints}
	a.svc, a.svcErr = New(endpoints.cfg, Deps{Conn: endpoints.js.Conn(), Endpoints: endpoints,
		Log: endpoints.log.With("part", "webhook-repair"), Registry: prometheus.NewRegistry()})
	return a
}

// Mount registers the routes on r, each behind admin (httpserver.RequireKey with the admin
// role, which also reads the body):
//
//	GET    /api/v1/webhooks             every endpoint (secrets masked)
//	POST   /api/v1/webhooks             create: 201 with the endpoint, its secret in clear (the only time)
//	GET    /api/v1/webhooks/:id         one endpoint
//	PUT    /api/v1/webhooks/:id         replace its definition (secrets and credentials left out are kept)
//	DELETE /api/v1/webhooks/:id         delete it (204)
//	POST   /api/v1/webhooks/:id/pause   stop deliveries; events wait in the log
//	POST   /api/v1/webhooks/:id/resume  resume (also re-enables a disabled endpoint)
//
//	GET    /api/v1/webhooks/:id/attempts                  its delivery records, from the history
//	GET    /api/v1/webhooks/:id/dead-letters              its dead letters, oldest first
//	POST   /api/v1/webhooks/:id/dead-letters/redeliver    send them again, remove those delivered
//	POST   /api/v1/webhooks/:id/replay                    send a time range of the log again (202, a job)
//	GET    /api/v1/webhooks/:id/replay/:job               the job's progress
//	DELETE /api/v1/webhooks/:id/replay/:job               stop it
//	POST   /api/v1/webhooks/:id/test                      send a sample event now
//
// A definition with problems gets 400 {"error":"invalid endpoint","errors":[…every reason…]}
// and changes nothing; so does any other bad input ({"error":"invalid request","errors":[…]}).
func (a *API) Mount(r fiber.Router, admin fiber.Handler) {
	r.Get("/api/v1/webhooks", admin, a.list)
	r.Post("/api/v1/webhooks", admin, a.create)
	r.Get("/api/v1/webhooks/:id", admin, a.get)
	r.Put("/api/v1/webhooks/:id", admin, a.update)
	r.Delete("/api/v1/webhooks/:id", admin, a.remove)
	r.Post("/api/v1/webhooks/:id/pause", admin, a.pause(true))
	r.Post("/api/v1/webhooks/:id/resume", admin, a.pause(false))
	r.Get("/api/v1/webhooks/:id/attempts", admin, a.attempts)
	r.Get("/api/v1/webhooks/:id/dead-letters", admin, a.deadLetters)
	r.Post("/api/v1/webhooks/:id/dead-letters/redeliver", admin, a.redeliver)
	r.Post("/api/v1/webhooks/:id/replay", admin, a.replay)
	r.Get("/api/v1/webhooks/:id/replay/:job", admin, a.replayStatus)
	r.Delete("/api/v1/webhooks/:id/replay/:job", admin, a.replayCancel)
	r.Post("/api/v1/webhooks/:id/test", admin, a.test)
}

func (a *API) list(c *fiber.Ctx) error {
	eps := a.endpoints.List()
	out := make([]Endpoint, len(eps))
	for i, ep := range eps {
		out[i] = ep.masked()
	}
	return c.JSON(fiber.Map{"endpoints": out})
}

func (a *API) get(c *fiber.Ctx) error {
	ep, ok := a.endpoints.Get(c.Params("id"))
	if !ok {
		return httpserver.Error(c, fiber.StatusNotFound, ErrNotFound.Error())
	}
	return c.JSON(ep.masked())
}

func (a *API) create(c *fiber.Ctx) error {
	def, err := decodeDefinition(c.Body())
	if err != nil {
		return answerError(c, err)
	}
	ep, err := a.endpoints.Create(c.UserContext(), def)
	if err != nil {
		return answerError(c, err)
	}
	c.Location("/api/v1/webhooks/" + ep.ID)
	return c.Status(fiber.StatusCreated).JSON(ep)
}

func (a *API) update(c *fiber.Ctx) error {
	def, err := decodeDefinition(c.Body())
	if err != nil {
		return answerError(c, err)
	}
	ep, err := a.endpoints.Update(c.UserContext(), c.Params("id"), def)
	if err != nil {
		return answerError(c, err)
	}
	return c.JSON(ep.masked())
}

func (a *API) remove(c *fiber.Ctx) error {
	if err := a.endpoints.Delete(c.UserContext(), c.Params("id")); err != nil {
		return answerError(c, err)
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func (a *API) pause(paused bool) fiber.Handler {
	return func(c *fiber.Ctx) error {
		ep, err := a.endpoints.SetPaused(c.UserContext(), c.Params("id"), paused)
		if err != nil {
			return answerError(c, err)
		}
		return c.JSON(ep.masked())
	}
}

// definition is what a client may set; the rest (id, state, times) is the store's. Unknown
// fields are refused, so a misspelt setting is an error rather than a default.
type definition struct {
	Description string            `json:"description"`
	URL         string            `json:"url"`
	Headers     map[string]string `json:"headers"`
	Auth        *Auth             `json:"auth"`
	Types       []string          `json:"types"`
	MinLevel    string            `json:"minLevel"`
	Sources     []string          `json:"sources"`
	Format      Format            `json:"format"`
	Secret      string            `json:"secret"` // shorthand for one secret
	Secrets     []string          `json:"secrets"`
	Batch       Batch             `json:"batch"`
	Timeout     Duration          `json:"timeout"`
	Retry       Retry             `json:"retry"`
	RateLimit   RateLimit         `json:"rateLimit"`
	Start       string            `json:"start"`
	Paused      bool              `json:"paused"`

	// The circuit breaker and the disabling after a long failure (breaker.go).
	Breaker      Breaker   `json:"breaker"`
	DisableAfter *Duration `json:"disableAfter"`
}

func decodeDefinition(body []byte) (Endpoint, error) {
	var d definition
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return Endpoint{}, &ValidationError{Problems: []string{"body: " + describeJSONError(err)}}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Endpoint{}, &ValidationError{Problems: []string{"body: want one JSON object"}}
	}
	return d.endpoint()
}

// endpoint is the definition as an endpoint, without id, state or times.
func (d definition) endpoint() (Endpoint, error) {
	ep := Endpoint{Description: d.Description, URL: d.URL, Headers: d.Headers, Auth: d.Auth, Types: d.Types,
		MinLevel: d.MinLevel, Sources: d.Sources, Format: d.Format, Secrets: d.Secrets, Batch: d.Batch,
		Timeout: d.Timeout, Retry: d.Retry, RateLimit: d.RateLimit, Start: d.Start, Paused: d.Paused}
	ep.Breaker, ep.DisableAfter = d.Breaker, d.DisableAfter
	if d.Secret != "" {
		if len(d.Secrets) > 0 {
			return Endpoint{}, &ValidationError{Problems: []string{"secret: give secret or secrets, not both"}}
		}
		ep.Secrets = []string{d.Secret}
	}
	return ep, nil
}

func describeJSONError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("not valid JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		return fmt.Sprintf("%s: want %s", te.Field, te.Type)
	case errors.Is(err, io.EOF):
		return "empty; want a JSON object"
	}
	return err.Error() // "json: unknown field \"x\"" and the like: they name the field
}

func answerError(c *fiber.Ctx, err error) error {
	var ve *ValidationError
	switch {
	case errors.As(err, &ve):
		return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": ErrInvalid.Error(), "errors": ve.Problems})
	case errors.Is(err, ErrNotFound):
		return httpserver.Error(c, fiber.StatusNotFound, err.Error())
	case errors.Is(err, ErrConflict):
		return httpserver.Error(c, fiber.StatusConflict, err.Error())
	case errors.Is(err, ErrTooMany):
		return httpserver.Error(c, fiber.StatusUnprocessableEntity, err.Error())
	}
	return err // 500, logged by the app's error handler without its detail
}
