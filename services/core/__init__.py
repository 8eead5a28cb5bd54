"""Shared by all three services: the record contract, NATS subjects, codec, runtime."""
