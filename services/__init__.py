"""flowscope: network-flow observability for Kubernetes.

Data path: bpf (kernel) → :mod:`flowscope.collector` → NATS → :mod:`flowscope.enricher`
→ NATS → :mod:`flowscope.exporter` → sinks. Shared contract and runtime live in
:mod:`flowscope.core`; the three services never import each other.
"""

__version__ = "0.1.0"
