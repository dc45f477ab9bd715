package livegateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// Purposes of stream tokens: a token opens only streams of its purpose.
const (
	purposeTracing = "tracing"
	purposeMetrics = "metrics"
)

// tokenTTL is how long a stream token is valid, as Stalwart's.
const tokenTTL = 60 * time.Second

// Stream tokens: GET /api/telemetry/live/{tracing,metrics}-token (Stalwart 0.15, JSON) and
// /api/token/{tracing,metrics} (0.16, plain text), and their check on the stream routes.

// tokens makes and checks short-lived stream tokens: "<purpose>.<key id>.<expiry>.<mac>",
// signed with a secret every gateway replica shares (in the GATEWAY bucket), so a token
// from one replica works on all of them. EventSource cannot send headers; these go in
// ?token=.
type tokens struct {
	secret []byte
	now    func() time.Time
}

const tokenSecretKey = "token-secret"

// loadTokenSecret returns the shared secret, making it on first use.
func loadTokenSecret(ctx context.Context, kv jetstream.KeyValue) ([]byte, error) {
	if e, err := kv.Get(ctx, tokenSecretKey); err == nil {
		return e.Value(), nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("read token secret: %w", err)
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	if _, err := kv.Create(ctx, tokenSecretKey, secret); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) { // another replica was first
			e, err := kv.Get(ctx, tokenSecretKey)
			if err != nil {
				return nil, fmt.Errorf("read token secret: %w", err)
			}
			return e.Value(), nil
		}
		return nil, fmt.Errorf("store token secret: %w", err)
	}
	return secret, nil
}

func (t *tokens) mac(payload string) string {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (t *tokens) issue(purpose, keyID string) string {
	payload := purpose + "." + keyID + "." + strconv.FormatInt(t.now().Add(tokenTTL).Unix(), 10)
	return payload + "." + t.mac(payload)
}

// check returns the key id of a valid token of the purpose.
func (t *tokens) check(tok, purpose string) (string, error) {
	if len(tok) > 256 {
		return "", errors.New("token: malformed")
	}
	i := strings.LastIndexByte(tok, '.')
	if i < 0 {
		return "", errors.New("token: malformed")
	}
	payload, mac := tok[:i], tok[i+1:]
	if !hmac.Equal([]byte(mac), []byte(t.mac(payload))) {
		return "", errors.New("token: invalid")
	}
	parts := strings.Split(payload, ".")
	if len(parts) != 3 {
		return "", errors.New("token: malformed")
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return "", errors.New("token: malformed")
	}
	if t.now().Unix() > exp {
		return "", errors.New("token: expired (tokens are valid 60 s; get a new one)")
	}
	if parts[0] != purpose {
		return "", fmt.Errorf("token: made for %s streams, not %s", parts[0], purpose)
	}
	return parts[1], nil
}

func (s *Service) tokenJSON(purpose string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"data": s.tokens.issue(purpose, httpserver.KeyOf(c).ID)})
	}
}

func (s *Service) tokenText(purpose string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.SendString(s.tokens.issue(purpose, httpserver.KeyOf(c).ID))
	}
}

// authStream accepts a stream token of the purpose in ?token=, or else a viewer key.
func (s *Service) authStream(purpose string) fiber.Handler {
	byKey := httpserver.RequireKey(s.keys, apikey.Viewer)
	return func(c *fiber.Ctx) error {
		tok := c.Query("token")
		if tok == "" {
			return byKey(c)
		}
		id, err := s.tokens.check(tok, purpose)
		if err != nil {
			return httpserver.Error(c, fiber.StatusUnauthorized, err.Error())
		}
		k, ok := s.keys.Get(id)
		if !ok {
			return httpserver.Error(c, fiber.StatusUnauthorized, "token: its key was revoked")
		}
		httpserver.SetKey(c, k)
		return c.Next()
	}
}
