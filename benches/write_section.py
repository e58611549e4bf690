#!/usr/bin/env python3
"""Puts a marked section into a results file, replacing only that section.

    write_section.py RESULTS.md SECTION.md

SECTION.md starts with a line `<!-- NAME begin -->` and ends with `<!-- NAME end -->`. The
part of RESULTS.md between the same two markers is replaced by it; without them there, the
section is appended. Everything else in RESULTS.md stays as it was.
"""
import os
import re
import sys

path, section_path = sys.argv[1], sys.argv[2]
section = open(section_path).read().rstrip("\n")
first = re.match(r"<!-- (.+?) begin -->", section)
if not first:
    sys.exit(f"{section_path}: the section must start with a '<!-- NAME begin -->' line")
name = re.escape(first.group(1))
text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
pattern = re.compile(rf"<!-- {name} begin -->.*?<!-- {name} end -->", re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: section, text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
with open(path, "w") as f:
    f.write(text if text.endswith("\n") else text + "\n")
