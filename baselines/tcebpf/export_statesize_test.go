package tcebpf

// KernelMapEntries counts the entries of the services and backends maps by
// walking them in the kernel, for checking Info's state_objects, which
// counts the copy Apply keeps.
func KernelMapEntries(d *Datapath) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.objs == nil {
		return 0, ErrNotSetUp
	}
	n := 0
	var sk tcebpfSvcKey
	var sv tcebpfSvcEntry
	it := d.objs.SvclabServices.Iterate()
	for it.Next(&sk, &sv) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	var bk tcebpfBackendKey
	var bv tcebpfBackendEntry
	bit := d.objs.SvclabBackends.Iterate()
	for bit.Next(&bk, &bv) {
		n++
	}
	return n, bit.Err()
}
