#!/bin/sh
# Print the Debian mirror the machine's apt sources name for SUITE ($1,
# default bookworm); sources that are not a Debian archive (".../debian")
# are ignored.  A suite the sources do not name (trixie, sid on a bookworm
# machine) gets the mirror of any suite they name: one archive serves all.
# Falls back to http://deb.debian.org/debian.
suite=${1:-bookworm}
uris() { # uris SUITE|"" : Debian archive URIs of the sources naming SUITE (any if "")
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        case $f in
        *.sources)
            awk -v suite="$1" 'BEGIN { RS = "" }
            {
                u = ""; s = ""; n = split($0, L, "\n")
                for (i = 1; i <= n; i++) {
                    if (L[i] ~ /^URIs:/) { u = L[i]; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
                    if (L[i] ~ /^Suites:/) s = L[i] " "
                }
                if ((suite == "" || index(s, " " suite " ")) && u ~ /^https?:\/\/.*\/debian\/?$/) print u
            }' "$f" ;;
        *)
            awk -v suite="$1" '$1 == "deb" {
                found = (suite == "")
                for (i = 2; i <= NF; i++) if ($i == suite) found = 1
                if (!found) next
                for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; break }
            }' "$f" ;;
        esac
    done
}
{ uris "$suite"; uris ""; } | head -n1 | grep . || echo http://deb.debian.org/debian
