"""Shim for Beam's `--setup_file ./setup.py` (Dataflow stages the package from it); the real
metadata is in pyproject.toml."""

from setuptools import setup

setup()
