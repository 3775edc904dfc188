"""The membership controller and its runtimes: the pure controller, the reconciler loop,
the peer-protocol client of the nodes, and the Kubernetes (kopf) adapter."""
