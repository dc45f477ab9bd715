package livegateway

import "time"

// Config configures the gateway. Zero fields take the defaults in parentheses.
type Config struct {
	Addr             string        // listen address (":8080")
	Heartbeat        time.Duration // comment sent on idle streams, so dead clients are found (15 s)
	QueueSize        int           // frames waiting for one slow stream (1024)
	MaxStreams       int           // open streams in total (1000)
	MaxStreamsPerKey int           // open streams per API key (20)
	// Hopeless is how long a stream may keep losing frames before it is closed (30 s).
	Hopeless time.Duration
	// StalwartBatch is how long the Stalwart-compatible streams gather events before a
	// frame, as Stalwart does (1 s).
	StalwartBatch time.Duration
	CORSOrigins   []string // allowed browser origins; none: no CORS headers
	Grace         time.Duration
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = ":8080"
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.QueueSize == 0 {
		c.QueueSize = 1024
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 1000
	}
	if c.MaxStreamsPerKey == 0 {
		c.MaxStreamsPerKey = 20
	}
	if c.Hopeless == 0 {
		c.Hopeless = 30 * time.Second
	}
	if c.StalwartBatch == 0 {
		c.StalwartBatch = time.Second
	}
	if c.Grace == 0 {
		c.Grace = 15 * time.Second
	}
}
