#!/usr/bin/env python3
"""Regenerates the docs/ pages that are copies of README.md sections.

README.md is the one place these sections are edited; docs/ holds them as pages of
their own for readers who land there. `--check` exits 1 (naming the page) when a copy
is out of date; tests/docs_sync.rs runs it.

    python3 scripts/sync-docs.py            # rewrite the copies
    python3 scripts/sync-docs.py --check    # only compare
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# page -> (README heading it copies, whether its headings move up one level)
PAGES = {
    "docs/admin.md": ("## Admin plane", False),
    "docs/auth.md": ("## Credentials", False),
    "docs/clients.md": ("## Clients tested against turnd", False),
    "docs/robustness.md": ("## Robustness", False),
    "docs/operations.md": ("## Operating turnd", True),
}

# A cross-reference that reads differently on its own page.
REWRITES = {
    "docs/operations.md": [
        ('see "One port 443 for TURN and HTTPS").', 'see "One port 443 for TURN and HTTPS" in the README).'),
    ],
}


def section(readme: str, heading: str) -> str:
    lines = readme.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    for k, i in enumerate(starts):
        if lines[i].startswith(heading):
            end = starts[k + 1] if k + 1 < len(starts) else len(lines)
            return "\n".join(lines[i:end]).rstrip("\n") + "\n"
    sys.exit(f"README.md has no section starting {heading!r}")


def shift_headings(text: str) -> str:
    out, in_code = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"#{2,6} ", line):
            line = line[1:]
        out.append(line)
    return "\n".join(out)


def page(readme: str, name: str) -> str:
    heading, shift = PAGES[name]
    text = section(readme, heading)
    if shift:
        text = shift_headings(text)
    for old, new in REWRITES.get(name, []):
        text = text.replace(old, new)
    return text


def main() -> int:
    check = "--check" in sys.argv[1:]
    readme = (ROOT / "README.md").read_text()
    stale = []
    for name in PAGES:
        path = ROOT / name
        want = page(readme, name)
        have = path.read_text() if path.exists() else ""
        if have == want:
            continue
        stale.append(name)
        if not check:
            path.write_text(want)
    if check and stale:
        print("out of date with README.md: " + ", ".join(stale) + " (run python3 scripts/sync-docs.py)")
        return 1
    if stale:
        print("rewrote " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
