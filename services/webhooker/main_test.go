package webhooker_test

import (
	"testing"

	"github.com/mailpulse/mailpulse/shared/httpserver/httpservertest"
)

func TestMain(m *testing.M) { httpservertest.VerifyTestMain(m) }
