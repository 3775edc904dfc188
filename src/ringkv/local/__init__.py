"""A ringkv cluster of local processes: ``ringkv up`` (the supervisor, its membership file
and its control API), ``ringkv node`` (the control client), network namespaces for
partitions, ``ringkv check`` (a consistency check under faults) and ``ringkv demo``."""
