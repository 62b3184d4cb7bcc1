#!/usr/bin/env python3
"""Makes Kubernetes 1.20's vendor/modules.txt readable by today's Go.

go1.15 listed some packages under a wildcard replacement header ('# path => repl'). Go 1.2x reads
those lines as packages of version "" of the module and stops with 'updates to go.mod needed,
disabled by -mod=vendor'. Each such package line is moved under the versioned header
('# path vX ...') of the same module; '## ' annotation lines stay where they are."""
import sys

path = sys.argv[1]
head, blocks = [], []
for line in open(path).read().splitlines():
    if line.startswith("# "):
        blocks.append([line, []])
    elif blocks:
        blocks[-1][1].append(line)
    else:
        head.append(line)

versioned = {}
for header, lines in blocks:
    fields = header.split()
    if len(fields) >= 3 and fields[2] != "=>":
        versioned.setdefault(fields[1], lines)

moved = 0
for block in blocks:
    fields = block[0].split()
    if len(fields) >= 3 and fields[2] == "=>" and fields[1] in versioned:
        packages = [l for l in block[1] if not l.startswith("## ")]
        block[1] = [l for l in block[1] if l.startswith("## ")]
        versioned[fields[1]].extend(packages)
        moved += len(packages)

out = head[:]
for header, lines in blocks:
    out.append(header)
    out.extend(lines)
open(path, "w").write("\n".join(out) + "\n")
print(f"modules.txt: moved {moved} package lines", file=sys.stderr)
