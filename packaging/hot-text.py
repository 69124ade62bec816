#!/usr/bin/env python3
"""packaging/hot-text.py owns the making of packaging/hot-text.ld, the linker script that puts
the functions the agent runs next to each other (build.rs hands it to the linker).

The kernel maps a binary's code 64 KiB around each page a process touches (fault-around), so a
function run once costs its whole neighbourhood in resident memory. The ~440 functions the agent
runs (start-up, a backlog of lines to files and MQTT, stop: 490 KiB) lay in 25 of the 38 such
windows of its code; in a section of their own they fill 11 (`make bench`, peak phase: about
0.9 MiB less at the peak, for the dynamic and the static build).

Input: the release build with symbols that `make bench` makes (target/bench-symbols, linked
without the script) and the callgrind files of its instructions phase, which hold instruction
addresses (`--dump-instr=yes`). Each address run is mapped to its function (`nm`), and each
function to a glob of its section's name (`-ffunction-sections`) that holds whatever the
toolchain, the target and the mangling: this host's rustc mangles the legacy way, Debian's
(the Pi's builds) v0, so the names are demangled and rebuilt from their identifiers (`pattern`).
One script serves every build; a function renamed since only falls back to its place in
`.text`, and a generic function's other instances come along (about 140 KiB more, of 575). It
says which functions of the profile no glob takes, should a name defeat them. To make it again:

    BENCH_ONLY=instructions BENCH_KEEP_TMP=1 make bench
    packaging/hot-text.py target/bench-symbols/release/container-logd \\
        WORK/callgrind-*.out* > packaging/hot-text.ld

With `--map MAP`, the binary is a release build (stripped, the release profile as it is) linked
without the script (`CLD_HOT_TEXT=0`: valgrind gives no object for addresses outside `.text`)
and with `CLD_LINK_MAP=MAP` (build.rs), run under callgrind; the map names the section of
every address. Neither setting changes a symbol's hash (the profile does), so the script then
lists those sections by their exact names first, and in a build of this toolchain and profile
(`make`'s release build for this host, the .deb's) the functions run fill the first windows
without the other instances of their generic functions, which the globs place after them. In other builds (the static one,
for an explicit target: 102 of 557 names; the Pi's, made by another rustc: none) only the
standard library's names, built once with the toolchain, match exactly; the rest goes by the
globs, as before:

    CLD_HOT_TEXT=0 CLD_LINK_MAP=/tmp/cld.map cargo build --release --target-dir /tmp/cld-hot
    BENCH_ONLY=instructions BENCH_KEEP_TMP=1 BENCH_AGENT=/tmp/cld-hot/release/container-logd \\
        BENCH_AGENT_SYMBOLS=/tmp/cld-hot/release/container-logd make bench
    packaging/hot-text.py --map /tmp/cld.map /tmp/cld-hot/release/container-logd \\
        WORK/callgrind-*.out* > packaging/hot-text.ld
"""
import bisect
import fnmatch
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


def demangle(names):
    """Rust's legacy and v0 names, demangled by c++filt."""
    out = subprocess.run(["c++filt"], input="\n".join(names), stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return out.splitlines()


def split(s, sep):
    """`s` cut at `sep` where no bracket is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in "<{([":
            depth += 1
        elif s[i] in ">})]":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    return parts + [s[start:]]


def closing(s):
    """Where the bracket that opens `s` closes."""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "<{([") - (c in ">})]")
        if depth == 0:
            return i
    return len(s)


def types(s):
    """The type names (capitals) in `s`, in order; a generic parameter (`T`) is none."""
    return [w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s) if w[0].isupper() and len(w) > 1]


def pattern(demangled):
    """A glob of the section of a function (`.text.SYMBOL`, or `.text.unlikely.SYMBOL` for a
    cold one) that holds under both manglings. Legacy writes a path's segments each after its
    length and generic arguments only in shims; v0 writes generic arguments, the module of an
    impl before its type, and refers back to a path already written. So: a leading run of
    modules as written (`4core3ptr`); after it anything before each further segment, written
    with its length when it is a plain identifier (a method: `*4emit`), bare otherwise
    (`*RawVec`, `*drop_in_place`); of generic arguments and of `<Type as Trait>` only the type
    names, each once; closure and shim marks, crate hashes and the legacy hash left out."""
    s = re.sub(r"::h[0-9a-f]{16}$|\[[0-9a-f]+\]|'[a-z_]+", "", demangled)
    out, said, head = [], set(), True

    def names(text):
        for w in types(text):
            if w not in said:
                said.add(w)
                out.append("*" + w)

    if s.startswith("<"):
        end = closing(s)
        for part in split(s[1:end], " as "):
            names(part)
        s, head = s[end + 1:].lstrip(":"), False
    for seg in split(s, "::"):
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", seg)
        if not m:
            # Generic arguments (`::<T>`), an impl block (`<impl Trait for Type>`), a closure.
            names(seg)
            head = False
            continue
        word = m.group(0)
        plain = seg == word
        if head and plain and word[0].islower() and word[0] != "_":
            out.append("%d%s" % (len(word), word))
            continue
        head = False
        # v0 puts a `_` between the length and an identifier that starts with one.
        out.append("*" + ("%d%s" % (len(word), word) if plain and word[0] != "_" else word))
        said.add(word)
        names(seg[len(word):])
    return ".text.*" + "".join(out).lstrip("*") + "*"


def map_sections(path):
    """(address, size, name) of every function's section (`.text.SYMBOL`, `.text.unlikely.SYMBOL`
    for a cold one) in an LLD map (`VMA LMA Size Align Out In Symbol`), by address, the name
    without `.text.`."""
    line_re = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text\.([^)\s]+)\)$")
    secs = []
    with open(path) as f:
        for line in f:
            m = line_re.match(line)
            if m and int(m.group(2), 16) > 0:
                secs.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    return sorted(secs)


def run_functions(binary, syms, paths):
    """The names of `syms` (address, size, name) holding an address run in `paths`."""
    starts = [s[0] for s in syms]
    run = set()
    for path in paths:
        for a in addresses(path, os.path.basename(binary)):
            i = bisect.bisect_right(starts, a) - 1
            if i >= 0 and a < syms[i][0] + max(syms[i][1], 1):
                run.add(syms[i][2])
    return run


def main():
    args = sys.argv[1:]
    exact = args[:1] == ["--map"]
    if exact:
        mapfile, args = args[1], args[2:]
    if len(args) < 2:
        sys.exit("usage: packaging/hot-text.py [--map MAP] BINARY CALLGRIND_FILE... "
                 "> packaging/hot-text.ld")
    binary = args[0]
    syms = map_sections(mapfile) if exact else symbols(binary)
    run = run_functions(binary, syms, args[1:])
    # Rust's functions only: the C ones (crt, libc's when static) have no section of their own.
    symbol = {n: re.sub(r"^(unlikely|hot|startup|exit)\.", "", n) for n in run}
    rust = sorted(n for n in run if symbol[n].startswith(("_ZN", "_R")))
    if not rust:
        sys.exit("hot-text.py: no function of %s in the callgrind files" % binary)
    hot = sorted(set(pattern(d) for d in demangle([symbol[n] for n in rust])) | {".text.main"})
    # Each function left out costs up to 64 KiB again: say so, should a name defeat the patterns.
    every = re.compile("|".join(fnmatch.translate(p) for p in hot))
    missed = [n for n in rust if not every.match(".text." + symbol[n])]
    if missed:
        print("hot-text.py: %d functions match no pattern:\n  %s" % (len(missed), "\n  ".join(missed)),
              file=sys.stderr)
    # The exact names first: the linker places a section by the first pattern that takes it.
    named = ['".text.%s"' % n for n in rust] if exact else []
    sys.stdout.write(HEAD + "".join("    *(%s)\n" % p for p in named + hot) + TAIL)


if __name__ == "__main__":
    main()
