#!/bin/sh
# mk/suite-check.sh SUITE MIRROR: the checks of one suite (make suite-SUITE).
#
#   pytest       the tree's tests inside .cache/SUITE-test (that suite's python3,
#                python3-augeas, libvirt, polkitd), the integration tests with a
#                private libvirtd included; DeprecationWarnings are errors, and so is
#                a skip not on tests/harness/skips.py's list of expected skips
#   lintian      that suite's lintian, inside the same chroot, --fail-on error,warning
#   autopkgtest  debian/tests/control in a throwaway unshare container of SUITE
#   piuparts     that suite's piuparts inside the same chroot: install/purge, then
#                install of the older version and upgrade to this one, purge
#
# Every step runs even if an earlier one failed; a summary line per step, the
# step's log in .build/suites/SUITE/.  Any "Traceback" or "bug in virtdeb" in a
# log is a failure too.  Expects .build/ (make package package-old source-package)
# and .cache/SUITE-test, .cache/SUITE-minbase(.tar) (make images test-chroots).
set -u
SUITE=$1
MIRROR=$2
TOP=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
OUT=$TOP/.build/suites/$SUITE
rm -rf "$OUT" && mkdir -p "$OUT"
VERSION=$(dpkg-parsechangelog -l "$TOP/debian/changelog" -S Version)
DEB=virtdeb_${VERSION}_all.deb
CHROOT=$TOP/.cache/$SUITE-test
FAILED=""
SUITE_START=$(date +%s)

in_chroot() { "$TOP/mk/in-chroot.sh" "$CHROOT" "$TOP" "$@"; }

# step NAME COMMAND...: run it, log it, print the result line of the step
step() {
    _name=$1; shift
    _start=$(date +%s)
    "$@" > "$OUT/$_name.log" 2>&1
    _rc=$?
    _secs=$(( $(date +%s) - _start ))
    if [ $_rc -eq 0 ] && grep -n -e 'Traceback' -e 'bug in virtdeb' "$OUT/$_name.log" \
            > "$OUT/$_name.bad"; then
        echo "$SUITE $_name: a Traceback or 'bug in virtdeb' in the log:" >&2
        head -n 5 "$OUT/$_name.bad" >&2
        _rc=1
    fi
    _line=$(summary "$_name")
    if [ $_rc -eq 0 ]; then
        echo "$SUITE $_name: PASS (${_secs}s) $_line"
    else
        echo "$SUITE $_name: FAIL (exit $_rc, ${_secs}s) $_line; log: $OUT/$_name.log"
        tail -n 40 "$OUT/$_name.log" | sed "s/^/  $SUITE $_name| /"
        # pytest's failed tests above those 40 lines (autopkgtest's unit test runs before
        # its system test, whose output fills the tail); the tail's own are shown already
        head -n -40 "$OUT/$_name.log" | grep -E '^(FAILED|ERROR) ' | head -n 20 \
            | sed "s/^/  $SUITE $_name| /"
        FAILED="$FAILED $_name"
    fi
}

# the result line(s) of each tool, for the summary
summary() {
    case $1 in
    pytest) grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed).* =+$' "$OUT/$1.log" | tail -n1 ;;
    autopkgtest) sed -n '/@@@@ summary/,$p' "$OUT/$1.log" | grep -E '^[a-z]+ +[A-Z]+' | tr -s ' ' | paste -sd';' ;;
    piuparts*) grep -E 'INFO: (PASS|FAIL)' "$OUT/$1.log" | sed 's/.*INFO: //' | paste -sd';' ;;
    lintian) grep -E '^[EW]: ' "$OUT/$1.log" | wc -l | sed 's/$/ errors or warnings/' ;;
    esac
}

# pytest: the images the apt tests copy are the suite's own (read-only at /src/.cache)
step pytest in_chroot env VIRTDEB_IMAGE_DIR=/src/.cache/$SUITE-minbase VIRTDEB_COUNT_SKIPS=1 \
    python3 -m pytest -q -p no:cacheprovider -ra --durations=15 -W error::DeprecationWarning tests

step lintian in_chroot sh -c 'lintian --version && lintian --fail-on error,warning --info \
    --display-info .build/lint/virtdeb_*.dsc .build/virtdeb_*_all.deb'

# autopkgtest exits 2 when a test was skipped. The unshare runner is no booted testbed
# (no isolation-container): it skips the booted test, which make booted runs on one
# (mk/booted.mk). Exit 2 counts as a pass only when that is the one test not PASSing.
autopkgtest_unshare() {
    autopkgtest "$@"
    _r=$?
    _summary="$TOP/.build/autopkgtest-$SUITE/summary"
    if [ $_r -eq 2 ] && [ -s "$_summary" ] \
            && ! grep -Ev '^booted +SKIP |^[a-z0-9_-]+ +PASS' "$_summary" >/dev/null; then
        echo "autopkgtest: only the booted test was skipped (no booted testbed): exit 0"
        return 0
    fi
    return $_r
}
rm -rf "$TOP/.build/autopkgtest-$SUITE"
step autopkgtest autopkgtest_unshare --output-dir "$TOP/.build/autopkgtest-$SUITE" \
    --setup-commands='apt-get update' \
    "$TOP/.build/$DEB" "$TOP/.build/autopkgtest-src/virtdeb/" \
    -- unshare --release "$SUITE" --tarball "$TOP/.cache/$SUITE-minbase.tar"

step piuparts in_chroot piuparts --no-eatmydata --existing-chroot=/src/.cache/$SUITE-minbase \
    -d "$SUITE" -m "$MIRROR" --no-upgrade-test "/src/.build/$DEB"

step piuparts-upgrade in_chroot piuparts --no-eatmydata \
    --existing-chroot=/src/.cache/$SUITE-minbase -d "$SUITE" -m "$MIRROR" \
    --bindmount=/src/.build/repo --extra-repo='deb [trusted=yes] file:///src/.build/repo ./' \
    --no-install-purge-test "/src/.build/$DEB"

SUITE_SECS=$(( $(date +%s) - SUITE_START ))
if [ -n "$FAILED" ]; then
    echo "$SUITE: FAILED:$FAILED (${SUITE_SECS}s)"
    exit 1
fi
echo "$SUITE: all checks passed (${SUITE_SECS}s)"
