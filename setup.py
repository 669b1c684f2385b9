"""Lists the unirg.* packages found under the top-level folders mapped in setup.cfg."""

from setuptools import find_packages, setup

TOP_LEVEL = ("plugin", "model", "sr_writer", "trainer", "orthanc")

setup(
    packages=[
        name
        for top in TOP_LEVEL
        for name in [f"unirg.{top}"] + [f"unirg.{top}.{sub}" for sub in find_packages(top)]
    ]
)
