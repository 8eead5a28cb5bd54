"""Enricher settings: names the deploy files use, validation, kubeconfig discovery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.enricher.service import kubeconfig_path
from flowscope.enricher.settings import Settings


def test_setting_names_and_environment_variables() -> None:
    env = {
        "FLOWSCOPE_KUBECONFIG": "", "FLOWSCOPE_KUBERNETES_MODE": "local",
        "FLOWSCOPE_KUBERNETES_LABEL_KEYS": "app, team", "FLOWSCOPE_KUBERNETES_DELETED_GRACE": "5",
        "FLOWSCOPE_JOIN_MERGE_WINDOW": "2", "FLOWSCOPE_JOIN_SOCKET_GRACE": "3",
        "FLOWSCOPE_JOIN_DNS_TTL_MIN": "1", "FLOWSCOPE_JOIN_DNS_TTL_MAX": "9",
        "FLOWSCOPE_JOIN_DNS_MAX_ENTRIES": "10", "FLOWSCOPE_JOIN_SOCKET_MAX_ENTRIES": "11",
        "FLOWSCOPE_CONSUMER_DURABLE": "enr", "FLOWSCOPE_CONSUMER_BATCH": "7",
        "FLOWSCOPE_CONSUMER_ACK_WAIT": "12", "FLOWSCOPE_CONSUMER_MAX_ACK_PENDING": "13",
    }  # fmt: skip
    s = config.load(Settings, {}, env=env)
    assert s.kubernetes.mode == "local" and s.kubernetes.label_keys == ("app", "team")
    assert (s.kubernetes.deleted_grace, s.join.merge_window, s.join.socket_grace) == (5, 2, 3)
    assert (s.join.dns_ttl_min, s.join.dns_ttl_max, s.join.dns_max_entries) == (1, 9, 10)
    assert s.join.socket_max_entries == 11
    assert (s.consumer.durable, s.consumer.batch, s.consumer.ack_wait) == ("enr", 7, 12)
    assert s.consumer.max_ack_pending == 13


@pytest.mark.parametrize(
    "env",
    [{"FLOWSCOPE_KUBERNETES_MODE": "cloud"}, {"FLOWSCOPE_CONSUMER_BATCH": "0"},
     {"FLOWSCOPE_JOIN_DNS_TTL_MAX": "0"}, {"FLOWSCOPE_CONSUMER_DURABLE": "a>b"},
     # nats-server refuses these consumer names too (a directory name; 255 bytes with -sockets)
     {"FLOWSCOPE_CONSUMER_DURABLE": "a/b"}, {"FLOWSCOPE_CONSUMER_DURABLE": "a\\b"},
     {"FLOWSCOPE_CONSUMER_DURABLE": "a\nb"}, {"FLOWSCOPE_CONSUMER_DURABLE": "e" * 248}],
)  # fmt: skip
def test_bad_values_name_the_setting(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(Settings, {}, env=env)
    assert next(iter(env)) in str(e.value)


def test_kubeconfig_precedence(tmp_path: Path) -> None:
    explicit, from_env = tmp_path / "a", tmp_path / "b"
    explicit.write_text("{}")
    from_env.write_text("{}")
    s = config.load(Settings, {"kubeconfig": str(explicit)}, env={})
    assert kubeconfig_path(s, {"KUBECONFIG": str(from_env)}) == str(explicit)
    plain = config.load(Settings, {}, env={})
    missing = str(tmp_path / "missing")
    assert kubeconfig_path(plain, {"KUBECONFIG": f"{missing}:{from_env}"}) == str(from_env)
    with pytest.raises(ConfigError):
        kubeconfig_path(config.load(Settings, {"kubeconfig": missing}, env={}), {})


def test_the_enricher_process_keeps_freed_memory_for_the_next_batch() -> None:
    """glibc takes the allocator thresholds (in a fresh process: they are process-wide)."""
    code = "from flowscope.enricher.service import keep_freed_memory; print(keep_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_long_lived_state_is_frozen_and_its_cycles_still_collected() -> None:
    """release_free_memory freezes what survived a full collection (left out of the
    automatic ones), and the next call still collects a cycle among those objects."""
    code = """if True:
        import gc, weakref
        from flowscope.enricher.service import release_free_memory
        class Node: pass
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        release_free_memory()
        frozen = gc.get_freeze_count()
        del a, b
        gc.collect()  # an automatic-style collection: frozen objects are not looked at
        kept = gone() is not None
        release_free_memory()
        print(frozen > 0, kept, gone() is None)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "True"]
