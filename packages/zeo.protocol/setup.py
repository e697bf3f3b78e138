"""Build the optional compiled helper; everything else is in pyproject.toml.

``zeo.protocol._speedups`` speeds up decoding (see its source).  It is
optional: without a C compiler the build goes on and the pure-Python
code is used.
"""

from setuptools import Extension
from setuptools import setup


setup(
    ext_modules=[
        Extension(
            "zeo.protocol._speedups",
            ["src/zeo/protocol/_speedups.c"],
            optional=True,
        ),
    ],
)
