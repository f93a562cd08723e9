package socketlb

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/internal/bpfstats"
)

// TestPrivilegedProgramStats: the hooks Programs hands out are the ones
// that run, and the kernel's statistics count one connect4 per connection.
func TestPrivilegedProgramStats(t *testing.T) {
	f := newFixture(t)
	f.apply(svc("web", "10.96.0.10", 80, 8080, be("a"), be("b")))
	progs, err := f.dp.Programs()
	require.NoError(t, err)
	defer func() { assert.NoError(t, bpfstats.CloseAll(progs)) }()
	for _, h := range hooks {
		assert.Contains(t, progs, h.name)
	}

	s, err := bpfstats.Enable()
	require.NoError(t, err)
	defer func() { assert.NoError(t, s.Close()) }()
	base, err := bpfstats.Read(progs)
	require.NoError(t, err)
	const n = 20
	r := f.client().do(clientCmd{Op: "tcp", Net: "tcp4", Addr: "10.96.0.10:80", N: n})
	require.Empty(t, r.Errors)
	after, err := bpfstats.Read(progs)
	require.NoError(t, err)
	d := after.Sub(base)
	assert.Equal(t, uint64(n), d["connect4"].RunCount, "one connect4 per connection")
	assert.NotZero(t, d["connect4"].RunTimeNS)
	assert.Equal(t, uint64(n), d["getpeername4"].RunCount, "the client asks getpeername once per connection")
	t.Logf("connect4: %d ns per run", d["connect4"].RunTimeNS/n)

	// Duplicates outlive the datapath: reading them after Close is safe.
	require.NoError(t, f.dp.Close())
	_, err = bpfstats.Read(progs)
	require.NoError(t, err)
}
