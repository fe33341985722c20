package audit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/internal/redistest"
)

// BenchmarkRecordLayoutBytes measures the Redis memory one allowed call's
// records take (its decision and its outcome), stored three ways, to
// ground issue 16's record version 2 (docs/performance.md, "Redis bytes
// per call"): "v1" is today's records byte for byte as the proxy writes
// them for the bench's allowed call; "v1-lean" leaves out what a verifier
// can rebuild (the chain's prev, the members the passport record already
// holds, the input's repeats of the record's own members); "v2" is a
// positional body per kind and a binary hash, in two stream fields that
// every entry shares, so the stream stores their names once per node;
// "v2-refs" also takes from records written once (a route record per
// configuration, the writers hash) and from the entry id what each call
// repeats. Only "v1" is a format anything reads today.
//
//	go test -run XXX -bench RecordLayoutBytes -benchtime 1x ./audit/
func BenchmarkRecordLayoutBytes(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { _ = rdb.Close() })
	const calls = 20_000
	for _, l := range recordLayouts {
		b.Run(l.name, func(b *testing.B) {
			ctx := context.Background()
			for range b.N {
				key := audit.StreamKey("layout-" + l.name)
				if err := rdb.Del(ctx, key).Err(); err != nil {
					b.Fatal(err)
				}
				start := time.Date(2026, 12, 5, 8, 53, 31, 36200414, time.UTC)
				pipe := rdb.Pipeline()
				payload := 0
				for i := range calls {
					c := newLayoutCall(start.Add(time.Duration(i) * time.Millisecond))
					for _, fields := range l.entries(c) {
						for k, v := range fields {
							payload += len(k) + len(v.(string))
						}
						pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: fields})
					}
					if pipe.Len() >= 1000 {
						if _, err := pipe.Exec(ctx); err != nil {
							b.Fatal(err)
						}
					}
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
				mem, err := rdb.MemoryUsage(ctx, key, 0).Result()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(mem)/calls, "redis-B/call")
				b.ReportMetric(float64(payload)/calls, "payload-B/call")
			}
		})
	}
}

// layoutCall is what varies from one allowed call to the next.
type layoutCall struct {
	time                      time.Time
	requestID                 string
	decisionHash, outHash     [32]byte
	decisionPrev, outcomePrev [32]byte
	seq                       uint64
}

var layoutSeq uint64

func newLayoutCall(t time.Time) layoutCall {
	var id [16]byte
	c := layoutCall{time: t}
	for _, p := range [][]byte{id[:], c.decisionHash[:], c.outHash[:], c.decisionPrev[:], c.outcomePrev[:]} {
		_, _ = rand.Read(p)
	}
	c.requestID = hex.EncodeToString(id[:])
	layoutSeq += 2
	c.seq = layoutSeq
	return c
}

var recordLayouts = []struct {
	name    string
	entries func(layoutCall) []map[string]any
}{
	{"v1", func(c layoutCall) []map[string]any {
		ts := c.time.Format(time.RFC3339Nano)
		d := `{"action":"service.restart","agent_id":"healer-1","agent_name":"healer-1","agent_type":"healer","decision":"allow","hash":"` + hex.EncodeToString(c.decisionHash[:]) +
			`","input":{"action":"service.restart","agent":{"blocked":false,"id":"healer-1","name":"healer-1","reputation":90,"trust_level":"HIGH","type":"healer"},"request":{"body":null,"headers":{"user-agent":"Go-http-client/1.1"},"id":"` + c.requestID +
			`","method":"POST","params":{"name":"checkout"},"path":"/services/checkout/restart","query":{}},"resource":"checkout","route":{"name":"POST /services/{name}/restart","production":true,"template":"POST /services/{name}/restart","tenant":""},"tenant":"acme","time":"` + ts +
			`","version":1},"jti":"bench-healer-1","kind":"decision","method":"POST","passport_id":"1796460811038-0","passport_sha256":"P62Z3wIyTL8NOV5PKYW04B-73COJfj3fkvnPYRFlXoU","path":"/services/checkout/restart","policy_revision":"c9c58cb78937285d","prev":"` + hex.EncodeToString(c.decisionPrev[:]) +
			`","reputation":90,"request_id":"` + c.requestID + `","resource":"checkout","route":"POST /services/{name}/restart","seq":` + strconv.FormatUint(c.seq, 10) +
			`,"tenant":"acme","time":"` + ts + `","trust_level":"HIGH","v":1,"writer":"vm-36cb2657"}`
		o := `{"agent_id":"healer-1","decision":"allow","hash":"` + hex.EncodeToString(c.outHash[:]) + `","kind":"outcome","latency_ms":21.902,"prev":"` + hex.EncodeToString(c.outcomePrev[:]) +
			`","request_id":"` + c.requestID + `","seq":` + strconv.FormatUint(c.seq+1, 10) + `,"status":200,"tenant":"acme","time":"` + c.time.Add(22*time.Millisecond).Format(time.RFC3339Nano) + `","v":1,"writer":"vm-36cb2657"}`
		return []map[string]any{{audit.FieldRecord: mustValid(d)}, {audit.FieldRecord: mustValid(o)}}
	}},
	{"v1-lean", func(c layoutCall) []map[string]any {
		ts := c.time.Format(time.RFC3339Nano)
		d := `{"action":"service.restart","agent_id":"healer-1","decision":"allow","hash":"` + hex.EncodeToString(c.decisionHash[:]) +
			`","input":{"agent":{"blocked":false},"request":{"body":null,"headers":{"user-agent":"Go-http-client/1.1"},"params":{"name":"checkout"},"query":{}},"route":{"production":true,"template":"POST /services/{name}/restart","tenant":""},"version":1},"kind":"decision","method":"POST","passport_id":"1796460811038-0","passport_sha256":"P62Z3wIyTL8NOV5PKYW04B-73COJfj3fkvnPYRFlXoU","path":"/services/checkout/restart","policy_revision":"c9c58cb78937285d","reputation":90,"request_id":"` + c.requestID +
			`","resource":"checkout","route":"POST /services/{name}/restart","seq":` + strconv.FormatUint(c.seq, 10) + `,"time":"` + ts + `","v":2,"writer":"vm-36cb2657"}`
		o := `{"hash":"` + hex.EncodeToString(c.outHash[:]) + `","kind":"outcome","latency_ms":21.902,"request_id":"` + c.requestID + `","seq":` + strconv.FormatUint(c.seq+1, 10) +
			`,"status":200,"time":"` + c.time.Add(22*time.Millisecond).Format(time.RFC3339Nano) + `","v":2,"writer":"vm-36cb2657"}`
		return []map[string]any{{audit.FieldRecord: mustValid(d)}, {audit.FieldRecord: mustValid(o)}}
	}},
	{"v2", func(c layoutCall) []map[string]any {
		ns := strconv.FormatInt(c.time.UnixNano(), 10)
		d := `["d",` + ns + `,"` + c.requestID + `","healer-1","1796460811038-0","P62Z3wIyTL8NOV5PKYW04B-73COJfj3fkvnPYRFlXoU","POST","/services/checkout/restart","POST /services/{name}/restart","service.restart","checkout","allow",[],"c9c58cb78937285d",90,` +
			`{"agent":{"blocked":false},"request":{"body":null,"headers":{"user-agent":"Go-http-client/1.1"},"params":{"name":"checkout"},"query":{}},"route":{"production":true,"template":"POST /services/{name}/restart","tenant":""},"version":1},"vm-36cb2657",` + strconv.FormatUint(c.seq, 10) + `]`
		o := `["o",` + strconv.FormatInt(c.time.Add(22*time.Millisecond).UnixNano(), 10) + `,"` + c.requestID + `",200,21.902,"vm-36cb2657",` + strconv.FormatUint(c.seq+1, 10) + `]`
		return []map[string]any{{"b": mustValid(d), "h": string(c.decisionHash[:])}, {"b": mustValid(o), "h": string(c.outHash[:])}}
	}},
	{"v2-refs", func(c layoutCall) []map[string]any {
		// The entry id's milliseconds carry the time (the body keeps the
		// offset), a route record once per configuration carries method,
		// action, resource, template and the path's params, the writers
		// hash an index per writer, and the outcome names its decision by
		// the decision's seq.
		d := `["d",36200,"` + c.requestID + `","healer-1","1796460811038-0","/services/checkout/restart",3,"allow",[],"c9c58cb78937285d",90,` +
			`{"agent":{"blocked":false},"request":{"headers":{"user-agent":"Go-http-client/1.1"}}},4,` + strconv.FormatUint(c.seq, 10) + `]`
		o := `["o",902000,` + strconv.FormatUint(c.seq, 10) + `,200,21.902,4,` + strconv.FormatUint(c.seq+1, 10) + `]`
		return []map[string]any{{"b": mustValid(d), "h": string(c.decisionHash[:])}, {"b": mustValid(o), "h": string(c.outHash[:])}}
	}},
}

func mustValid(s string) string {
	if !json.Valid([]byte(s)) {
		panic(fmt.Sprintf("layout record is not JSON: %s", s))
	}
	return s
}
