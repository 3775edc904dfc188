"""ringkv: a replicated, leaderless key-value store.

Packages, lowest layer first (docs/ARCHITECTURE.md; `make lint` enforces who may import
whom): ``ringkv.node`` (the node), ``ringkv.operator`` (the membership controller and the
Kubernetes operator), ``ringkv.client`` (the HTTP client and the CLI), ``ringkv.local``
(a cluster of local processes: ``ringkv up``, its control API, ``ringkv check``, the demo)
and ``ringkv.bench`` (the benchmark tools).
"""
