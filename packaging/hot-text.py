#!/usr/bin/env python3
"""packaging/hot-text.py owns the making of packaging/hot-text.ld, the linker script that puts
the functions the agent runs next to each other (build.rs hands it to the linker).

The kernel maps a binary's code 64 KiB around each page a process touches (fault-around), so a
function run once costs its whole neighbourhood in resident memory. The ~440 functions the agent
runs (start-up, a backlog of lines to files and MQTT, stop: 490 KiB) lay in 25 of the 38 such
windows of its code; in a section of their own they fill 10 (`make bench`, peak phase: about
1 MiB less at the peak, for the dynamic and the static build).

Input: the release build with symbols that `make bench` makes (target/bench-symbols, linked
without the script) and the callgrind files of its instructions phase, which hold instruction
addresses (`--dump-instr=yes`). Each address run is mapped to its function (`nm`), and each
function to a pattern of its section's name (`-ffunction-sections`: `.text.SYMBOL`, or
`.text.unlikely.SYMBOL` for a cold one) without what differs between toolchains and targets:
the hash of a legacy-mangled name (`17h<16 hex>E`) and the crate disambiguators of a v0-mangled
one (`Cs<base62>_`). So one script serves every build, the Pi's too; a function renamed since
only falls back to its place in `.text`. The patterns also take a generic function's other
instances (about 130 KiB more). To make it again:

    BENCH_ONLY=instructions BENCH_KEEP_TMP=1 make bench
    packaging/hot-text.py target/bench-symbols/release/container-logd \\
        WORK/callgrind-*.out* > packaging/hot-text.ld
"""
import bisect
import os
import re
import subprocess
import sys

HEAD = """\
/* packaging/hot-text.ld puts the functions the agent runs (start-up, a backlog of lines to files
   and MQTT, stop) at the start of its code, so that the pages they share are few. Made by
   packaging/hot-text.py from a profile; a function renamed since only falls back to its place in
   .text. build.rs hands it to the linker (GNU ld and LLD both read INSERT); it stays out of
   the builds valgrind reads (CLD_HOT_TEXT=0), which names only functions in .text. */
SECTIONS
{
  .text.hot : {
"""
TAIL = """\
  }
}
INSERT BEFORE .text;
"""


def symbols(binary):
    """(address, size, name) of every function of the binary, by address."""
    out = subprocess.run(["nm", "-S", binary], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            syms.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return sorted(syms)


def addresses(path, name):
    """Instruction addresses run in the object called `name` (its file name) in one callgrind
    file (`--dump-instr=yes`): absolute (0x…), relative to the last (+n, -n) or the same (*)."""
    names, obj, last, run = {}, None, 0, set()
    with open(path) as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                m = re.match(r"(c?ob)=\((\d+)\)(?: (.*))?", line.strip())
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                if m.group(1) == "ob":
                    obj = os.path.basename(names[m.group(2)])
                continue
            tok = line.split(maxsplit=1)[0] if line.strip() else ""
            if tok.startswith("0x"):
                last = int(tok, 16)
            elif tok[:1] in ("+", "-") and tok[1:].isdigit():
                last += int(tok)
            elif tok != "*":
                continue
            if obj == name:
                run.add(last)
    return run


def pattern(name):
    """The section of a symbol, without its hashes, cold or not (LLVM puts a `#[cold]` function
    in `.text.unlikely.SYMBOL`)."""
    name = re.sub(r"17h[0-9a-f]{16}E.*$", "17h*", name)
    if name.startswith("_R"):
        name = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", name) + "*"
    return ".text.*" + name


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: packaging/hot-text.py BINARY CALLGRIND_FILE... > packaging/hot-text.ld")
    binary = sys.argv[1]
    syms = symbols(binary)
    starts = [s[0] for s in syms]
    hot = set()
    for path in sys.argv[2:]:
        for a in addresses(path, os.path.basename(binary)):
            i = bisect.bisect_right(starts, a) - 1
            # Rust's functions only: the C ones (crt, libc's when static) have no section
            # of their own.
            if i >= 0 and a < syms[i][0] + max(syms[i][1], 1) and \
                    syms[i][2].startswith(("_ZN", "_R")) or syms[i][2] == "main":
                hot.add(pattern(syms[i][2]))
    if not hot:
        sys.exit("hot-text.py: no instruction of %s in the callgrind files" % binary)
    sys.stdout.write(HEAD + "".join("    *(%s)\n" % p for p in sorted(hot)) + TAIL)


if __name__ == "__main__":
    main()
