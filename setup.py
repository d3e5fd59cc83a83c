"""The optional compiled hot path (decoder._speedups); everything else is in pyproject.toml.

``optional=True``: without a C compiler (or Python headers) the build warns and goes on, and
the package runs its pure-Python path (decoder/accel.py). ``pip install .``, ``pip install
-e .`` and ``pip wheel .`` build it where a compiler is present.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("decoder._speedups", ["decoder/_speedups.c"], optional=True,
                             extra_compile_args=["-O2"])])
