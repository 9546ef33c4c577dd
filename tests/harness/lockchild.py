"""Child processes of the lock tests (tests/test_lock.py, tests/test_faults_concurrent.py).

    python3 tests/harness/lockchild.py maint ROOT URI ACTION [ARGS...]   virtdeb.maint on ROOT
    python3 tests/harness/lockchild.py hold ROOT                          hold ROOT's lock until
                                                                  stdin closes; print its line

Run by path (not ``-m``): the lock tests start it through ``Host.run``, whose
environment is clean and whose working directory is not the tree's.
"""

from __future__ import annotations

import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
if str(TOP) not in sys.path:
    sys.path.insert(0, str(TOP))

from virtdeb import lock, maint  # noqa: E402
from virtdeb.host import Host  # noqa: E402


def main(argv: list[str]) -> int:
    mode, root = argv[0], argv[1]
    if mode == "maint":
        return maint.main(argv[3:], root=root, uri=argv[2])
    if mode == "hold":
        host = Host(root=Path(root))
        with lock.hold(host.path(lock.LOCK), "lockchild hold", wait=30):
            print(host.path(lock.LOCK).read_text().strip(), flush=True)
            sys.stdin.read()
        return 0
    print(f"lockchild: unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
