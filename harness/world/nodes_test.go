package world

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/datapath"
)

// fakeDP records what the per-node fan-out asks of one instance.
type fakeDP struct {
	applied  []datapath.State
	closed   bool
	applyErr error
	info     map[string]string
}

func (f *fakeDP) Setup(context.Context, *datapath.Env) error { return nil }
func (f *fakeDP) Apply(_ context.Context, st datapath.State) error {
	f.applied = append(f.applied, st)
	return f.applyErr
}
func (f *fakeDP) Targets(svc datapath.Service, port datapath.ServicePort) []netip.AddrPort {
	return datapath.VIPTargets(svc, port)
}
func (f *fakeDP) Info() map[string]string { return f.info }
func (f *fakeDP) Close() error            { f.closed = true; return nil }

func TestPerNodeFansOut(t *testing.T) {
	st := datapath.State{Services: []datapath.Service{{Namespace: "default", Name: "echo"}}}
	tests := []struct {
		name    string
		errs    []error
		wantErr string
	}{
		{"all apply", []error{nil, nil, nil}, ""},
		{"one node fails", []error{nil, errors.New("boom"), nil}, "node-1: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &perNode{}
			var fakes []*fakeDP
			for i, e := range tt.errs {
				f := &fakeDP{applyErr: e, info: map[string]string{"rules": string(rune('0' + i))}}
				fakes = append(fakes, f)
				p.nodes = append(p.nodes, f)
			}
			err := p.Apply(context.Background(), st)
			if tt.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.wantErr)
			}
			for i, f := range fakes {
				assert.Equal(t, []datapath.State{st}, f.applied, "node %d is programmed with the same state", i)
			}
			assert.Equal(t, map[string]string{"rules": "0", "nodes": "3"}, p.Info(), "node 0's info with the node count")
			require.NoError(t, p.Close())
			for i, f := range fakes {
				assert.True(t, f.closed, "node %d closed", i)
			}
			w := &World{Datapath: p}
			assert.Len(t, w.Nodes(), 3)
		})
	}
}
