"""Shared by the unit and lab suites.

pyinfra's CLI patches the standard library for gevent before anything else runs, and federate's
inventory loader is pyinfra's CLI code: patch first here too, so tests run in the environment the
deploy and the `federate` command run in (and nothing is patched after ssl was imported).
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402  (after the patch, as above)
from pathlib import Path  # noqa: E402

# Labs that several modules share for a whole session: those modules must run in one pytest process.
SHARED_LABS = {"lab": "demo", "deployed": "demo", "variant_lab": "variants"}


def pytest_addoption(parser):
    parser.addoption("--list-groups", metavar="FILE",
                     help="write the test groups that can run in parallel processes to FILE (JSON: "
                          "group -> {modules, tests}) and run nothing; tests/run_suites.py uses it")


def module_groups(items, root: Path) -> dict[str, dict]:
    """Each module in one group: the shared lab its tests use, 'unit', or a group of its own;
    per group its modules (in collection order) and its number of tests."""
    groups: dict[str, dict] = {}
    placed: set[Path] = set()
    for item in items:
        if item.path in placed:
            continue
        siblings = [other for other in items if other.path == item.path]
        shared = [SHARED_LABS[name] for other in siblings for name in other.fixturenames if name in SHARED_LABS]
        group = groups.setdefault(shared[0] if shared else ("unit" if "unit" in item.path.parts else item.path.stem),
                                  {"modules": [], "tests": 0})
        group["modules"].append(str(item.path.relative_to(root)))
        group["tests"] += len(siblings)
        placed.add(item.path)
    return groups


def pytest_collection_modifyitems(config, items):
    target = config.getoption("--list-groups")
    if target:
        Path(target).write_text(json.dumps(module_groups(items, config.rootpath)))
        config.hook.pytest_deselected(items=list(items))
        items.clear()
