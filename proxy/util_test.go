package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"testing"

	"github.com/redis/go-redis/v9"
)

func mustEd(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}

func ioCopy(w io.Writer, res *http.Response) (int64, error) { return io.Copy(w, res.Body) }

var b64Strict = base64.RawURLEncoding.Strict()
