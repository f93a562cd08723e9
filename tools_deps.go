//go:build tools

// Package main pins the modules the project builds on before every package
// that uses them exists, so that parallel work does not race on go.mod.
package main

import (
	_ "github.com/HdrHistogram/hdrhistogram-go"
	_ "github.com/cilium/ebpf"
	_ "github.com/containerd/cgroups/v3/cgroup2"
	_ "github.com/stretchr/testify/require"
	_ "golang.org/x/perf/benchmath"
	_ "golang.org/x/term"
	_ "gonum.org/v1/plot"
	_ "sigs.k8s.io/yaml"
)
