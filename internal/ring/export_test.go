package ring

// SharesStathat reports whether a and b use the same stathat ring.
func SharesStathat(a, b *Ring) bool { return a.snap.Load().c == b.snap.Load().c }
