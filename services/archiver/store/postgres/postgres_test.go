package postgres

import (
	"testing"

	"github.com/mailpulse/mailpulse/services/archiver/store"
	"github.com/mailpulse/mailpulse/services/archiver/store/storetest"
	"github.com/mailpulse/mailpulse/shared/pgtest"
)

func TestContract(t *testing.T) {
	server := pgtest.Server(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(t.Context(), pgtest.Database(t, server))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
