package livegateway

import (
	"encoding/json"
	"errors"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// API keys (admin): GET, POST /api/v1/keys and DELETE /api/v1/keys/:id. A change applies on
// every replica at once (the keys live in a KV bucket every gateway watches).

func (s *Service) listKeys(c *fiber.Ctx) error {
	keys := s.keys.List()
	out := make([]fiber.Map, 0, len(keys))
	for _, k := range keys { // never the hash
		out = append(out, fiber.Map{"id": k.ID, "name": k.Name, "role": k.Role, "fixed": k.Fixed, "createdAt": k.CreatedAt})
	}
	return c.JSON(fiber.Map{"keys": out})
}

func (s *Service) createKey(c *fiber.Ctx) error {
	var req struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := json.Unmarshal(c.Body(), &req); err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, `body: want {"name":…,"role":"admin|viewer|ingest"}`)
	}
	role, err := apikey.ParseRole(req.Role)
	if err != nil {
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	}
	ctx, cancel := requestContext()
	defer cancel()
	plain, k, err := s.keys.Create(ctx, req.Name, role)
	switch {
	case errors.Is(err, apikey.ErrTooMany):
		return httpserver.Error(c, fiber.StatusConflict, err.Error())
	case errors.Is(err, apikey.ErrInvalidName):
		return httpserver.Error(c, fiber.StatusBadRequest, err.Error())
	case err != nil:
		return httpserver.Error(c, fiber.StatusServiceUnavailable, err.Error())
	}
	s.log.Info("API key created", "key_id", k.ID, "role", k.Role, "by", httpserver.KeyOf(c).ID)
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"id": k.ID, "name": k.Name, "role": k.Role, "key": plain,
		"note": "the key is shown this once; only its hash is stored"})
}

func (s *Service) revokeKey(c *fiber.Ctx) error {
	id := c.Params("id")
	ctx, cancel := requestContext()
	defer cancel()
	if err := s.keys.Revoke(ctx, id); err != nil {
		if errors.Is(err, apikey.ErrNotFound) {
			return httpserver.Error(c, fiber.StatusNotFound, "no key "+id)
		}
		return httpserver.Error(c, fiber.StatusServiceUnavailable, err.Error())
	}
	s.log.Info("API key revoked", "key_id", id, "by", httpserver.KeyOf(c).ID)
	return c.SendStatus(fiber.StatusNoContent)
}
