"""Checks a Linux-built driver image (target/sys/X.sys): run by scripts/check-sys.sh.

Two independent PE readers, no hand parsing: `llvm-readobj` (its COFF dump:
file and optional headers, sections, exports, imports, debug directory) for the
checks, and the `pefile` package for the PE checksum, which llvm-readobj does
not verify, and as a cross-check of the import table.

Exit status: 0 when every check of every file passed, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pefile

# ----------------------------------------------------------------- allow-lists

# Everything the shells may import from the kernel: the hand-declared surface
# (shell/src/km_raw.rs), the spin lock (common/src/sync.rs) and the delay of
# the NMR seam (common/src/nmr.rs). A new kernel function is added here on
# purpose, with the file that declares it, or the check fails.
NTOSKRNL_ALLOWED = {
    # shell/src/km_raw.rs: trace sink, worker thread, allocator, panic
    "DbgPrintEx",
    "PsCreateSystemThread",
    "PsTerminateSystemThread",
    "ZwWaitForSingleObject",
    "ZwClose",
    "KeDelayExecutionThread",  # also common/src/nmr.rs
    "ExAllocatePool2",
    "ExFreePoolWithTag",
    "KeBugCheckEx",
    # shell/src/km_raw.rs: the C memory functions LLVM emits calls to
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    # common/src/sync.rs: KernelSpinLock
    "KeAcquireSpinLockRaiseToDpc",
    "KeReleaseSpinLock",
    # common/src/nmr.rs: the per-processor rundown. On x64 the processor
    # index is an inline gs: read (wdm.h's KeGetCurrentProcessorIndex), so
    # the x64 images do not import KeGetCurrentProcessorNumberEx; other
    # architectures call it.
    "KeQueryMaximumProcessorCountEx",
    "KeGetCurrentProcessorNumberEx",
}

# The NMR functions each driver needs, exactly (common/src/ffi.rs, `netio`).
NETIO_REQUIRED = {
    "nmr_client": {
        "NmrRegisterClient",
        "NmrDeregisterClient",
        "NmrWaitForClientDeregisterComplete",
        "NmrClientAttachProvider",
        "NmrClientDetachProviderComplete",
    },
    "nmr_provider": {
        "NmrRegisterProvider",
        "NmrDeregisterProvider",
        "NmrWaitForProviderDeregisterComplete",
        "NmrProviderDetachClientComplete",
    },
}

# The first Windows 10 build that exports each kernel function newer than
# Windows 10 1507 (build 10240); every other allowed import is older. The
# INF's install sections must not offer the package to an older build
# (inf/*.inx, TargetOSVersion decoration NTamd64.10.0...<build>).
NTOSKRNL_FIRST_BUILD = {
    "ExAllocatePool2": 19041,  # Windows 10 2004 (NTDDI_WIN10_VB), wdm.h
}

NTOSKRNL = "ntoskrnl.exe"
NETIO = "NETIO.SYS"

# ------------------------------------------------------------ llvm-readobj


@dataclass
class Node:
    """One `Name {` ... `}` or `Name [` ... `]` block of llvm-readobj's output."""

    name: str
    head: str = ""  # what follows the name on the opening line, e.g. "(0x1E0)"
    fields: list[tuple[str, str]] = field(default_factory=list)
    children: list["Node"] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.fields if k == key), None)

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.fields if k == key]

    def child(self, name: str) -> "Node | None":
        return next((c for c in self.children if c.name == name), None)

    def flags(self) -> set[str]:
        """The flag names of a `Characteristics [ (0x..)` block."""
        return {line.split()[0] for line, _ in self.fields}


OPEN = re.compile(r"^(?P<name>[A-Za-z][\w ]*?)\s*(?P<br>[{\[])\s*(?P<head>.*)$")
KEYVAL = re.compile(r"^(?P<key>[A-Za-z][\w]*):\s?(?P<val>.*)$")


def readobj(readobj_bin: str, path: str) -> Node:
    """Runs llvm-readobj and returns its output as a tree of blocks."""
    out = subprocess.run(
        [
            readobj_bin,
            "--file-headers",
            "--section-headers",
            "--coff-exports",
            "--coff-imports",
            "--coff-debug-directory",
            path,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    root = Node("File")
    stack = [root]
    for raw in out.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line in ("}", "]"):
            if len(stack) > 1:
                stack.pop()
            continue
        m = OPEN.match(line)
        if m:
            node = Node(m["name"], m["head"])
            stack[-1].children.append(node)
            stack.append(node)
            continue
        m = KEYVAL.match(line)
        if m:
            stack[-1].fields.append((m["key"], m["val"].strip()))
        else:  # a flag line inside a `[ ... ]` block
            stack[-1].fields.append((line, ""))
    return root


# ------------------------------------------------------------------ checks


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str, detail: str) -> None:
        if ok:
            self.passed += 1
            print(f"PASS {self.name}: {what}: {detail}")
        else:
            self.failed += 1
            print(f"FAIL {self.name}: {what}: {detail}")


def fmt(names) -> str:
    return ", ".join(sorted(names)) if names else "(none)"


def check_file(path: str, readobj_bin: str) -> bool:
    base = os.path.basename(path)
    stem = base.rsplit(".", 1)[0].lower()
    r = Report(base)

    if stem not in NETIO_REQUIRED:
        r.check(False, "driver", f"unknown image name (expected one of {fmt(NETIO_REQUIRED)})")
        print(f"{base}: FAILED")
        return False

    try:
        tree = readobj(readobj_bin, path)
    except subprocess.CalledProcessError as e:
        r.check(False, "llvm-readobj", e.stderr.strip() or f"exit {e.returncode}")
        print(f"{base}: FAILED")
        return False
    fh = tree.child("ImageFileHeader")
    oh = tree.child("ImageOptionalHeader")
    if fh is None or oh is None:
        r.check(False, "PE image", "llvm-readobj shows no PE file/optional header")
        print(f"{base}: FAILED")
        return False

    # Machine, subsystem, DLL characteristics.
    machine = fh.get("Machine") or "?"
    r.check(machine.startswith("IMAGE_FILE_MACHINE_AMD64 "), "machine x64", machine)
    subsystem = oh.get("Subsystem") or "?"
    r.check(subsystem.startswith("IMAGE_SUBSYSTEM_NATIVE "), "subsystem NATIVE", subsystem)
    chars = oh.child("Characteristics")
    dllchars = chars.flags() if chars else set()
    for flag in ("FORCE_INTEGRITY", "NX_COMPAT", "DYNAMIC_BASE"):
        full = f"IMAGE_DLL_CHARACTERISTICS_{flag}"
        r.check(full in dllchars, f"{flag} set", "yes" if full in dllchars else f"no ({fmt(dllchars)})")

    # No section is both writable and executable.
    wx = []
    for sec in tree.children:
        if sec.name == "Sections":
            for s in sec.children:
                c = s.child("Characteristics")
                f = c.flags() if c else set()
                if {"IMAGE_SCN_MEM_WRITE", "IMAGE_SCN_MEM_EXECUTE"} <= f:
                    wx.append((s.get("Name") or "?").split(" (")[0])
    r.check(not wx, "no writable+executable section", fmt(wx))

    # The PE checksum: pefile recomputes it (llvm-readobj does not).
    pe = pefile.PE(path, fast_load=True)
    try:
        stored = pe.OPTIONAL_HEADER.CheckSum
        computed = pe.generate_checksum()
        r.check(
            stored != 0 and stored == computed,
            "PE checksum valid",
            f"stored 0x{stored:08X}, computed 0x{computed:08X}",
        )

        # Exports: DriverEntry alone, and it is the entry point.
        exports = [n for n in tree.children if n.name == "Export"]
        names = [e.get("Name") or f"#{e.get('Ordinal')}" for e in exports]
        r.check(names == ["DriverEntry"], "only export is DriverEntry", fmt(names))
        entry = oh.get("AddressOfEntryPoint")
        de_rva = next((e.get("RVA") for e in exports if e.get("Name") == "DriverEntry"), None)
        r.check(
            de_rva is not None and entry is not None and int(de_rva, 16) == int(entry, 16),
            "entry point is DriverEntry",
            f"AddressOfEntryPoint {entry}, DriverEntry {de_rva}",
        )

        # Imports, as llvm-readobj reads them.
        imports: dict[str, list[str]] = {}
        for n in tree.children:
            if n.name == "Import":
                imports.setdefault(n.get("Name") or "?", []).extend(
                    re.sub(r"\s*\(\d+\)$", "", s) for s in n.all("Symbol")
                )
        delay = [n.get("Name") or "?" for n in tree.children if n.name == "DelayImport"]
        r.check(not delay, "no delay-load imports", fmt(delay))

        # ... and as pefile reads them: the two must agree.
        pe.parse_data_directories(
            directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]]
        )
        pe_imports = {
            d.dll.decode(): sorted(
                i.name.decode() if i.name else f"#{i.ordinal}" for i in d.imports
            )
            for d in getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
        }
        ro_imports = {k: sorted(v) for k, v in imports.items()}
        r.check(
            pe_imports == ro_imports,
            "llvm-readobj and pefile agree on the imports",
            f"{sum(map(len, ro_imports.values()))} functions from {fmt(ro_imports)}",
        )
    finally:
        pe.close()

    dlls = set(imports)
    r.check(
        dlls <= {NTOSKRNL, NETIO},
        f"imports only from {NTOSKRNL} and {NETIO}",
        fmt(dlls),
    )
    by_ordinal = [f"{d}!{s}" for d, syms in imports.items() for s in syms if not s or s.startswith("#")]
    r.check(not by_ordinal, "no import by ordinal", fmt(by_ordinal))

    kernel = set(imports.get(NTOSKRNL, []))
    extra = kernel - NTOSKRNL_ALLOWED
    r.check(
        not extra,
        f"every {NTOSKRNL} import is on the allow-list",
        f"NOT ALLOWED: {fmt(extra)}" if extra else f"{len(kernel)} imports: {fmt(kernel)}",
    )
    others = {f"{d}!{s}" for d, syms in imports.items() if d not in (NTOSKRNL, NETIO) for s in syms}
    if others:
        r.check(False, "imports outside the allow-list", fmt(others))

    nmr = set(imports.get(NETIO, []))
    want = NETIO_REQUIRED[stem]
    missing, unexpected = want - nmr, nmr - want
    detail = fmt(nmr)
    if missing or unexpected:
        detail = f"missing: {fmt(missing)}; not needed by {stem}: {fmt(unexpected)}"
    r.check(not missing and not unexpected, f"NMR imports are exactly {stem}'s", detail)

    # The debug directory names the .pdb that build-sys.sh put beside the image.
    pdbs = [
        p.get("PDBFileName") or "?"
        for d in tree.children
        if d.name == "DebugDirectory"
        for e in d.children
        for p in e.children
        if p.name == "PDBInfo"
    ]
    r.check(pdbs == [f"{stem}.pdb"], "CodeView debug entry names the .pdb", fmt(pdbs))

    check_inf(r, os.path.splitext(path)[0] + ".inf", kernel)

    total = r.passed + r.failed
    if r.failed:
        print(f"{base}: FAILED ({r.failed} of {total} checks failed)")
    else:
        print(f"{base}: OK (all {total} checks passed)")
    return r.failed == 0


SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]")
INSTALL = re.compile(r"^DefaultInstall\.NTamd64\.10\.0\.\.\.(?P<build>\d+)(\.Services)?$", re.I)


def check_inf(r: "Report", inf: str, kernel: set[str]) -> None:
    """The stamped INF beside the image (build-sys.sh writes it): a primitive
    driver with no uninstall section (infverif /w), offered only to the Windows
    builds that export every kernel function the image imports."""
    name = os.path.basename(inf)
    if not os.path.isfile(inf):
        r.check(False, "INF beside the image", f"{inf}: no such file")
        return
    with open(inf, encoding="utf-8", errors="replace") as f:
        lines = [line.split(";", 1)[0] for line in f]
    sections = [m["name"].strip() for line in lines if (m := SECTION.match(line))]
    uninstall = [s for s in sections if s.lower().startswith("defaultuninstall")]
    delservice = [line.strip() for line in lines if re.match(r"^\s*DelService\s*=", line, re.I)]
    r.check(
        not uninstall and not delservice,
        f"{name}: no [DefaultUninstall], no DelService (primitive driver, infverif /w)",
        fmt(uninstall + delservice),
    )
    install = [s for s in sections if s.lower().startswith("defaultinstall")]
    builds = {s: INSTALL.match(s) for s in install}
    undecorated = [s for s, m in builds.items() if not m]
    needed = {i: NTOSKRNL_FIRST_BUILD[i] for i in kernel if i in NTOSKRNL_FIRST_BUILD}
    need = max(needed.values(), default=10240)
    lowest = min((int(m["build"]) for m in builds.values() if m), default=0)
    r.check(
        bool(install) and not undecorated and lowest >= need,
        f"{name}: every [DefaultInstall] needs Windows 10 build >= the imports' {need}",
        f"undecorated: {fmt(undecorated)}" if undecorated or not install
        else f"lowest NTamd64.10.0...{lowest}, needed {need} ({fmt(set(needed)) or 'no import newer than 10240'})",
    )


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: check_sys.py IMAGE.sys...", file=sys.stderr)
        return 2
    readobj_bin = os.environ.get("LLVM_READOBJ", "llvm-readobj")
    ok = True
    for path in argv[1:]:
        if not os.path.isfile(path):
            print(f"FAIL {path}: no such file")
            print(f"{os.path.basename(path)}: FAILED")
            ok = False
            continue
        ok &= check_file(path, readobj_bin)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
