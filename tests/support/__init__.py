"""Test support: real peers (nats-server, network namespaces, fake APIs over real HTTP)."""
