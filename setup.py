"""Build hook: ship the top-level ``schemas/`` inside the wheel as ``odespec/_schemas/``.

The schema is the contract and lives at the repository's top level where users and editors find
it; an installed (non-editable) wheel must carry it too, and ``odespec.spec.schema`` looks there.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSchemas(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).parent / "schemas"
        dst = Path(self.build_lib) / "odespec" / "_schemas"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.json")):
            shutil.copy2(f, dst / f.name)


setup(cmdclass={"build_py": BuildPyWithSchemas})
