#!/usr/bin/env python3
# test_translations.py: every catalogue in po/LINGUAS translates every message of the template that
# the build makes from po/POTFILES, with no fuzzy entries, valid formats, and a keyboard mnemonic
# wherever the English text has one.
#
# Environment: SNAPGEN_POT (build/po/snapgen-gimp.pot).
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gimptest  # noqa: E402
from gimptest import ROOT, check  # noqa: E402


def entries(po_text):
    """(msgid, msgstr, flags) of each entry of a .po/.pot text, strings joined and unescaped."""
    found = []
    for block in po_text.split("\n\n"):
        flags = " ".join(line for line in block.splitlines() if line.startswith("#,"))
        parts = {"msgid": [], "msgstr": []}
        current = None
        for line in block.splitlines():
            match = re.match(r'^(msgid|msgstr) "(.*)"$', line)
            if match:
                current = match.group(1)
                parts[current].append(match.group(2))
            elif current and re.match(r'^"(.*)"$', line):
                parts[current].append(line[1:-1])
        if parts["msgid"] or parts["msgstr"]:
            join = lambda p: bytes("".join(p), "utf-8").decode("unicode_escape").encode(
                "latin-1").decode("utf-8")
            found.append((join(parts["msgid"]), join(parts["msgstr"]), flags))
    return [e for e in found if e[0]]  # drop the header


def main():
    pot = gimptest.require_env("SNAPGEN_POT")
    template = {msgid for msgid, _, _ in entries(open(pot, encoding="utf-8").read())}
    check("template has messages", len(template) > 40, f"{len(template)} messages")
    languages = open(os.path.join(ROOT, "po", "LINGUAS")).read().split()
    check("LINGUAS lists de and ko", {"de", "ko"} <= set(languages), " ".join(languages))

    for lang in languages:
        path = os.path.join(ROOT, "po", lang + ".po")
        catalogue = {msgid: (msgstr, flags)
                     for msgid, msgstr, flags in entries(open(path, encoding="utf-8").read())}
        missing = sorted(template - set(catalogue))
        untranslated = missing + [m for m in template if m in catalogue and not catalogue[m][0]]
        check(f"{lang}: every message translated", not untranslated,
              "; ".join(untranslated[:5]))
        fuzzy = [m for m in template if m in catalogue and "fuzzy" in catalogue[m][1]]
        check(f"{lang}: no fuzzy entries", not fuzzy, "; ".join(fuzzy[:5]))
        stale = sorted(set(catalogue) - template)
        check(f"{lang}: no stale entries", not stale, "; ".join(stale[:5]))
        result = subprocess.run(["msgfmt", "--check", "--statistics", "-o", os.devnull, path],
                                capture_output=True, text=True)
        report = (result.stderr + result.stdout).strip().splitlines()
        check(f"{lang}: msgfmt --check", result.returncode == 0, report[-1] if report else "")
        no_mnemonic = [m for m in template if m in catalogue and re.search(r"_\w", m)
                       and "_" not in catalogue[m][0]]
        check(f"{lang}: mnemonics kept", not no_mnemonic, "; ".join(no_mnemonic[:5]))
    gimptest.finish()


if __name__ == "__main__":
    main()
