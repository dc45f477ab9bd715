package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestServerAndDatabase(t *testing.T) {
	dsn := Database(t, Server(t))
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT 40 + 2").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query = %d, %v", n, err)
	}
}
