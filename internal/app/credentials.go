package app

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/config"
)

// natsDir is where the embedded server keeps its store.
func natsDir(p *config.Process) string { return filepath.Join(p.DataDir, "nats") }

// credentialsFile keeps the embedded listener's generated credentials across restarts; only
// the bcrypt hash of the password is written.
type credentialsFile struct {
	User         string `json:"user"`
	PasswordHash string `json:"passwordHash"`
}

func startBroker(p *config.Process, log *slog.Logger, info *Ready) (*broker.Server, error) {
	if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	bc := broker.Config{StoreDir: natsDir(p), Name: "mailpulse"}
	if p.NATS.Listen != "" {
		bc.Listen = p.NATS.Listen
		user, pass := p.NATS.User, p.NATS.Password
		if user == "" {
			user = "mailpulse"
		}
		if pass == "" {
			var err error
			if pass, err = generatedPassword(filepath.Join(p.DataDir, "nats-credentials.json"), user, info); err != nil {
				return nil, err
			}
		} else if !strings.HasPrefix(pass, "$2") {
			// A configured password is hashed before the server sees it: it then holds no
			// plaintext secret.
			hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
			if err != nil {
				return nil, fmt.Errorf("hash the NATS password: %w", err)
			}
			pass = string(hash)
		}
		bc.User, bc.Password = user, pass
		info.NATSUser = user
	}
	srv, err := broker.Start(bc, log)
	if err != nil {
		return nil, err
	}
	info.Embedded = true
	info.NATSURL = srv.ClientURL()
	return srv, nil
}

// generatedPassword returns the bcrypt hash the listener checks. On first use it makes a
// password, shows it once through info, and stores only its hash.
func generatedPassword(path, user string, info *Ready) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		var c credentialsFile
		if err := json.Unmarshal(b, &c); err == nil && c.User == user && c.PasswordHash != "" {
			return c.PasswordHash, nil
		}
	}
	raw := make([]byte, 18)
	_, _ = rand.Read(raw)
	plain := hex.EncodeToString(raw)
	hash, err := bcrypt.GenerateFromPassword([]byte(plain), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(credentialsFile{User: user, PasswordHash: string(hash)})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("store NATS credentials: %w", err)
	}
	info.NATSPass = plain
	return string(hash), nil
}
