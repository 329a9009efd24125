"""Checks a Linux-built driver image (target/sys/X.sys): the independent cross-check of `cargo xtask check`, run by `cargo xtask ci-sys`.

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

# The functions each image hands to the kernel and the NMR, to be called
# through a pointer from outside the image: the NPI dispatch tables and the
# NMR characteristics (attach, detach, cleanup), DriverUnload and the worker
# thread's start routine. Kernel CFG stops a call to any of them that is not in
# the image's guard function table, so every one must be there. Names are the
# Rust paths (generic functions have one instance: the hash is ignored), found
# in the image's .map; each with the line that hands it out. A handed-out
# function added to the source is added here on purpose, or goes unchecked;
# one renamed or removed fails the check ("not in the map").
HANDED_OUT = {
    "nmr_client": {
        # nmr/src/lib.rs, the client's NPI_CLIENT_CHARACTERISTICS
        "nmr::attach_provider": "ClientAttachProvider",
        "nmr_common::binding::detach_callback": "ClientDetachProvider",
        "nmr::cleanup_binding": "ClientCleanupBindingContext",
        # npi/src/lib.rs, client_table (ClientDispatch)
        "nmr_checksum_npi::notify_trampoline": "client dispatch: notify",
        # shell/src/shell.rs
        "nmr_client::driver::driver_unload": "DriverUnload",
        "nmr_shell::shell::worker": "PsCreateSystemThread start routine",
    },
    "nmr_provider": {
        # nmr/src/lib.rs, the provider's NPI_PROVIDER_CHARACTERISTICS
        "nmr::attach_client": "ProviderAttachClient",
        "nmr_common::binding::detach_callback": "ProviderDetachClient",
        "nmr::cleanup_binding": "ProviderCleanupBindingContext",
        # npi/src/lib.rs, provider_table (ProviderDispatch)
        "nmr_checksum_npi::get_info_trampoline": "provider dispatch: get_info",
        "nmr_checksum_npi::checksum_trampoline": "provider dispatch: checksum",
        # shell/src/shell.rs
        "nmr_provider::driver::driver_unload": "DriverUnload",
        "nmr_shell::shell::worker": "PsCreateSystemThread start routine",
    },
}

# winnt.h: IMAGE_GUARD_* (GuardFlags of the load configuration).
IMAGE_GUARD_CF_INSTRUMENTED = 0x100
IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT = 0x400
# The load configuration must reach GuardFlags (offset 144, 4 bytes) for the
# kernel to read the CFG fields (shell/src/load_config.rs pins the layout).
LOAD_CONFIG_MIN_SIZE = 148
# winnt.h: IMAGE_DEBUG_TYPE_EX_DLLCHARACTERISTICS, IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT.
DEBUG_TYPE_EX_DLLCHARACTERISTICS = 20
EX_CET_COMPAT = 0x1

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
            "--coff-load-config",
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
    for flag in ("FORCE_INTEGRITY", "NX_COMPAT", "DYNAMIC_BASE", "GUARD_CF"):
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

        check_cfg_cet(r, tree, pe, path, stem)
        check_instrumented(r, pe, path)
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

    # The debug directory names the .pdb that `cargo xtask package` put beside the image.
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


def walk(node: Node):
    yield node
    for c in node.children:
        yield from walk(c)


def num(value: str | None) -> int | None:
    """A number of llvm-readobj's output (`0x1F`, `26`, `0x0 (...)`), or None."""
    if not value:
        return None
    try:
        return int(value.split()[0], 0)
    except ValueError:
        return None


LEGACY = re.compile(r"^_ZN(?P<body>.*)17h[0-9a-f]{16}E$")


def rust_path(symbol: str) -> str | None:
    """The path of a legacy-mangled Rust symbol without its hash
    (`_ZN10nmr_client6driver13driver_unload17h...E` ->
    `nmr_client::driver::driver_unload`), or None."""
    m = LEGACY.match(symbol)
    if not m:
        return None
    body, parts = m["body"], []
    while body:
        n = re.match(r"^(\d+)", body)
        if not n:
            return None
        length = int(n[1])
        start = len(n[1])
        parts.append(body[start:start + length])
        body = body[start + length:]
    return "::".join(parts)


def map_functions(map_path: str) -> dict[str, set[int]]:
    """Rust path (or plain symbol) -> the VAs of the code symbols of that name
    in lld's .map (section 0001, .text)."""
    out: dict[str, set[int]] = {}
    with open(map_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or not parts[0].startswith("0001:"):
                continue
            name = rust_path(parts[1]) or parts[1]
            try:
                out.setdefault(name, set()).add(int(parts[2], 16))
            except ValueError:
                continue
    return out


def check_cfg_cet(r: "Report", tree: Node, pe, path: str, stem: str) -> None:
    """Control Flow Guard and CET: the load configuration with the CFG fields
    set, the guard function table covering every function the image hands
    out, and the CET-compatible flag. llvm-readobj for the checks, pefile
    for a second reading of the guard flags and the CET entry."""
    pe.parse_data_directories(
        directories=[
            pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG"],
            pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_DEBUG"],
        ]
    )
    image_base = pe.OPTIONAL_HEADER.ImageBase
    image_end = image_base + pe.OPTIONAL_HEADER.SizeOfImage
    lc = tree.child("LoadConfig")
    if lc is None:
        r.check(False, "load configuration (_load_config_used)", "none: the image has no load configuration directory")
        fids: set[int] = set()
    else:
        size = num(lc.get("Size")) or 0
        check, dispatch = num(lc.get("GuardCFCheckFunction")), num(lc.get("GuardCFCheckDispatch"))
        flags = num(lc.get("GuardFlags")) or 0
        count = num(lc.get("GuardCFFunctionCount")) or 0
        inside = lambda va: va is not None and image_base <= va < image_end  # noqa: E731
        r.check(
            size >= LOAD_CONFIG_MIN_SIZE and inside(check) and inside(dispatch),
            "load configuration with CFG check and dispatch pointers",
            f"Size {size:#x} (>= {LOAD_CONFIG_MIN_SIZE:#x}), GuardCFCheckFunctionPointer {check or 0:#x}, "
            f"GuardCFDispatchFunctionPointer {dispatch or 0:#x} (inside the image "
            f"{image_base:#x}..{image_end:#x})",
        )
        want = IMAGE_GUARD_CF_INSTRUMENTED | IMAGE_GUARD_CF_FUNCTION_TABLE_PRESENT
        r.check(
            flags & want == want and count > 0,
            "guard flags CF_INSTRUMENTED | CF_FUNCTION_TABLE_PRESENT, a guard function table",
            f"GuardFlags {flags:#x}, GuardCFFunctionCount {count}",
        )
        table = lc.child("GuardFidTable") or next(
            (n for n in tree.children if n.name == "GuardFidTable"), None
        )
        fids = {int(v, 16) for v, _ in table.fields} if table else set()
        pe_lc = getattr(pe, "DIRECTORY_ENTRY_LOAD_CONFIG", None)
        pe_flags = pe_lc.struct.GuardFlags if pe_lc else None
        pe_count = pe_lc.struct.GuardCFFunctionCount if pe_lc else None
        r.check(
            pe_flags == flags and pe_count == count == len(fids),
            "llvm-readobj and pefile agree on the guard table",
            f"GuardFlags {flags:#x} / {pe_flags if pe_flags is None else hex(pe_flags)}, "
            f"count {count} / {pe_count}, {len(fids)} entries listed",
        )
    top = next((n for n in tree.children if n.name == "GuardFidTable"), None)
    if top is not None and not fids:
        fids = {int(v, 16) for v, _ in top.fields}

    # Every function handed out is a valid call target.
    map_path = os.path.splitext(path)[0] + ".map"
    if not os.path.isfile(map_path):
        r.check(False, "guard table covers the functions handed out", f"{map_path}: no such file")
    else:
        functions = map_functions(map_path)
        missing, uncovered, covered = [], [], []
        for name, role in sorted(HANDED_OUT[stem].items()):
            vas = functions.get(name)
            if not vas:
                missing.append(f"{name} ({role})")
            elif not vas <= fids:
                uncovered.append(f"{name} ({role}) at {fmt(hex(v) for v in vas - fids)}")
            else:
                covered.append(role)
        code = sum(len(v) for v in functions.values())
        detail = f"{len(covered)} of {len(HANDED_OUT[stem])} in the table ({len(fids)} guard entries, {code} code symbols in the map)"
        if missing or uncovered:
            detail = f"NOT IN THE GUARD TABLE: {fmt(uncovered)}; NOT IN THE MAP: {fmt(missing)}"
        r.check(not missing and not uncovered, "guard table covers every function the image hands out", detail)

    # CET: the extended DLL characteristics debug entry (/CETCOMPAT).
    cet_ro = any(
        n.name == "ExtendedCharacteristics" and "IMAGE_DLL_CHARACTERISTICS_EX_CET_COMPAT" in n.flags()
        for n in walk(tree)
    )
    cet_pe = any(
        d.struct.Type == DEBUG_TYPE_EX_DLLCHARACTERISTICS
        and getattr(getattr(d, "entry", None), "ExDllCharacteristics", 0) & EX_CET_COMPAT
        for d in getattr(pe, "DIRECTORY_ENTRY_DEBUG", [])
    )
    r.check(
        cet_ro and cet_pe,
        "CET compatible (IMAGE_DLLCHARACTERISTICS_EX_CET_COMPAT)",
        f"llvm-readobj: {'yes' if cet_ro else 'no'}, pefile: {'yes' if cet_pe else 'no'}",
    )


INSN = re.compile(r"^\s*(?P<addr>[0-9a-f]+):\s+(?P<op>\S+)\s*(?P<args>.*)$")
RIP_TARGET = re.compile(r"# (0x[0-9a-f]+)")
REGISTER = re.compile(r"^r[a-z0-9]+$")


def check_instrumented(r: "Report", pe, path: str) -> None:
    """Every indirect call or jump through a function pointer goes through the
    CFG dispatch pointer: what -C control-flow-guard does, which the linker's
    /guard:cf alone does not (it marks the image GUARD_CF and lists every
    relocated function of an uninstrumented object, and the checks above then
    pass). From llvm-objdump's disassembly of the image: an indirect `call` or
    `jmp` is fine when it reads the dispatch slot (`__guard_dispatch_icall_fptr`,
    whose VA the load configuration gives) or an import address table slot
    (read-only, as MSVC leaves them), or when its register was last written
    from one of those, or by a switch's jump table (`movsxd reg, [table +
    4*index]; add reg, table`: read-only, bounds-checked, which MSVC does not
    guard either); and the no-op dispatch routine's own `jmp rax`. Any other
    is an unchecked indirect branch."""
    lc = getattr(pe, "DIRECTORY_ENTRY_LOAD_CONFIG", None)
    dispatch = lc.struct.GuardCFDispatchFunctionPointer if lc else 0
    iat_dir = pe.OPTIONAL_HEADER.DATA_DIRECTORY[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IAT"]]
    iat = range(
        pe.OPTIONAL_HEADER.ImageBase + iat_dir.VirtualAddress,
        pe.OPTIONAL_HEADER.ImageBase + iat_dir.VirtualAddress + iat_dir.Size,
    )
    nop_dispatch = None
    if dispatch:
        try:
            nop_dispatch = pe.get_qword_at_rva(dispatch - pe.OPTIONAL_HEADER.ImageBase)
        except pefile.PEFormatError:
            nop_dispatch = None
    objdump = os.environ.get("LLVM_OBJDUMP", "llvm-objdump")
    try:
        out = subprocess.run(
            [objdump, "-d", "--no-show-raw-insn", "-M", "intel", path],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        r.check(False, "every indirect call goes through the CFG dispatch", f"{objdump}: {e}")
        return
    insns = [(int(m["addr"], 16), m["op"], m["args"]) for line in out.splitlines() if (m := INSN.match(line))]

    def source(va: int | None) -> str | None:
        if va is None:
            return None
        if dispatch and va == dispatch:
            return "dispatch"
        if va in iat:
            return "import"
        return None

    counts = {"dispatch": 0, "import": 0, "jump table": 0, "no-op dispatch": 0}
    unchecked = []
    for i, (addr, op, args) in enumerate(insns):
        if op not in ("call", "jmp") or args.startswith("0x"):
            continue
        kind = None
        if args.startswith("qword ptr [rip"):
            m = RIP_TARGET.search(args)
            kind = source(int(m[1], 16) if m else None)
        elif REGISTER.match(args):
            if addr == nop_dispatch:
                kind = "no-op dispatch"
            else:
                # The last instruction before this one that wrote the register.
                for j in range(i - 1, max(-1, i - 64), -1):
                    _, op2, args2 = insns[j]
                    if not args2.startswith(args + ","):
                        continue
                    if op2 == "mov":
                        m = RIP_TARGET.search(args2)
                        kind = source(int(m[1], 16) if m else None) if "[rip" in args2 else None
                    elif op2 == "add" and j > 0 and insns[j - 1][1] == "movsxd" and insns[j - 1][2].startswith(args + ", dword ptr ["):
                        kind = "jump table"
                    break
        if kind is None:
            unchecked.append(f"{addr:#x}: {op} {args.split('#')[0].strip()}")
        else:
            counts[kind] += 1
    detail = (
        f"{counts['dispatch']} through __guard_dispatch_icall_fptr, {counts['import']} through the "
        f"import address table, {counts['jump table']} switch jump tables, {counts['no-op dispatch']} no-op dispatch"
    )
    if unchecked:
        shown = ", ".join(unchecked[:8]) + (f" and {len(unchecked) - 8} more" if len(unchecked) > 8 else "")
        detail = f"{len(unchecked)} UNCHECKED indirect calls/jumps: {shown} (besides {detail})"
    r.check(
        not unchecked and counts["dispatch"] > 0,
        "every indirect call goes through the CFG dispatch (compiled with -C control-flow-guard)",
        detail,
    )


SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]")
INSTALL = re.compile(r"^DefaultInstall\.NTamd64\.10\.0\.\.\.(?P<build>\d+)(\.Services)?$", re.I)


def check_inf(r: "Report", inf: str, kernel: set[str]) -> None:
    """The stamped INF beside the image (`cargo xtask package` writes it): a primitive
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
