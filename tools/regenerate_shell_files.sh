#!/bin/sh
# Regenerate the committed shell completion scripts (completions/) and manual pages (man/) from the
# command tree. Run it after adding, removing or changing a command or an option; the drift test in
# tests/test_shell.py fails until the committed files match what the commands generate.
#
# Usage: tools/regenerate_shell_files.sh
#   ZUTIS=/path/to/zutis, or a command with arguments such as
#   ZUTIS="env PYTHONPATH=$PWD .venv/bin/python -m zutiscli", uses another entry point (split on spaces).
set -eu

cd "$(dirname "$0")/.."
zutis=${ZUTIS:-zutis}

# $zutis is split into words on purpose: ZUTIS may be a command with arguments.
$zutis completions bash -o completions/zutis.bash >/dev/null
$zutis completions zsh -o completions/_zutis >/dev/null
$zutis completions fish -o completions/zutis.fish >/dev/null

# Pages of commands that no longer exist must go too.
rm -f man/zutis.1 man/zutis-*.1
$zutis man -o man --quiet >/dev/null

echo "regenerated completions/ and man/"
