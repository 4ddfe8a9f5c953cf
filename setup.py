"""Package layout: the four top-level code folders install under ``xpusim``.

Metadata lives in pyproject.toml; this file only computes the package list and the
package-dir mapping (``xpusim.sim`` -> ``sim/`` ...), which pyproject.toml cannot
express without listing every subpackage by hand.
"""

from setuptools import find_packages, setup

CODE_FOLDERS = ("sim", "hwprofiles", "kernels", "calibrate")

packages = ["xpusim"]
for folder in CODE_FOLDERS:
    packages += [f"xpusim.{name}" for name in find_packages(include=[folder, f"{folder}.*"])]

setup(
    packages=packages,
    package_dir={"xpusim": "xpusim", **{f"xpusim.{f}": f for f in CODE_FOLDERS}},
)
