"""The one thing pyproject.toml cannot declare without experimental setuptools options:
the enricher's compiled flow core (services/enricher/flowcore.c, CPython API only).

Every ``pip install`` builds it; it needs a C compiler and Python's headers
(scripts/bootstrap installs gcc and python3-dev; deploy/Dockerfile's build stage has
them). ``flowscope.enricher.enriching`` falls back to its Python path when the module is
missing, with the same output.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "flowscope.enricher._flowcore",
            sources=["services/enricher/flowcore.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
