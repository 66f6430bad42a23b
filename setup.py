"""Build script: installs the ``sswp_fast`` package and its embedded default dataset."""

from setuptools import setup

setup(
    packages=["sswp_fast", "sswp_fast.data"],
    package_data={"sswp_fast.data": ["*.npz"], "sswp_fast": ["py.typed"]},
)
