"""Print a pip constraints file pinning every dependency of pyproject.toml (extras included)
to the lowest release series its lower bound allows: ``name>=X.Y`` becomes ``name==X.Y.*``.

``make test-lowest`` installs with it and runs the suite, so the lower bounds we publish are
ones that were tested (issue 11). Upper bounds stay as written.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

BOUND = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)")


def main() -> None:
    project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
                            .read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += [r for r in extra if not r.startswith(project["name"])]
    for requirement in requirements:
        match = BOUND.match(requirement.split(";")[0].strip())
        if match:
            print(f"{match.group(1)}=={match.group(3)}.*")


if __name__ == "__main__":
    main()
