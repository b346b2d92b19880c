//! The table compiler against rows checked by hand for a small object,
//! against `readelf --debug-dump=frames-interp` (binutils, an independent
//! reader) on the system's libc, and against malformed input.

use std::{path::Path, process::Command};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::*;

const MAX_ROWS: usize = 1 << 22;

/// Three functions with CFI written out: an outermost `_start`, `f` with a
/// frame pointer, `g` without one.
const SMALL: &str = r#"
    .text
    .globl _start
_start:
    .cfi_startproc
    .cfi_undefined rip
    xor %ebp, %ebp
    call f
    hlt
    .cfi_endproc

    .globl f
f:
    .cfi_startproc
    push %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset rbp, -16
    mov %rsp, %rbp
    .cfi_def_cfa_register rbp
    sub $32, %rsp
    nop
    leave
    .cfi_def_cfa rsp, 8
    ret
    .cfi_endproc

    .globl g
g:
    .cfi_startproc
    sub $24, %rsp
    .cfi_def_cfa_offset 32
    nop
    add $24, %rsp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
"#;

fn build(dir: &Path, name: &str, source: &str, flags: &[&str]) -> Vec<u8> {
    let extension = if source.contains(".cfi_startproc") {
        "s"
    } else {
        "c"
    };
    let path = dir.join(format!("{name}.{extension}"));
    std::fs::write(&path, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&path)
        .status()
        .expect("run gcc (`cargo xtask setup` installs it)");
    assert!(status.success(), "gcc {name}");
    std::fs::read(out).unwrap()
}

fn symbol(data: &[u8], name: &str) -> u32 {
    let file = object::File::parse(data).unwrap();
    let address = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name}"))
        .address();
    u32::try_from(address).unwrap()
}

#[test]
fn rows_of_a_small_object_match_the_hand_checked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = build(dir.path(), "small", SMALL, &["-nostdlib", "-static"]);
    let table = compile_elf(&data, MAX_ROWS).unwrap();
    let (start, f, g) = (
        symbol(&data, "_start"),
        symbol(&data, "f"),
        symbol(&data, "g"),
    );
    use UnwindKind::*;
    // Instruction lengths: push 1, mov 3, sub 4, nop 1, leave 1, ret 1;
    // xor 2, call 5, hlt 1.
    assert_eq!((f - start, g - f), (8, 11));
    let expected = [
        UnwindRow::new(start, End, 0, 0),
        UnwindRow::new(f, SpOffset, 8, 0),
        UnwindRow::new(f + 1, SpOffset, 16, -16),
        UnwindRow::new(f + 4, FpOffset, 16, -16),
        UnwindRow::new(f + 10, SpOffset, 8, -16),
        UnwindRow::new(g, SpOffset, 8, 0),
        UnwindRow::new(g + 4, SpOffset, 32, 0),
        UnwindRow::new(g + 9, SpOffset, 8, 0),
        UnwindRow::new(g + 10, None, 0, 0),
    ];
    assert_eq!(table.rows, expected);
    assert_eq!(table.lookup(u64::from(f + 6)).unwrap().kind, FpOffset as u8);
    assert_eq!(table.lookup(u64::from(g + 20)).unwrap().kind, None as u8);
    assert!(table.lookup(u64::from(start - 1)).is_none());
}

/// `readelf --debug-dump=frames-interp`'s rows: (location, CFA, rbp rule,
/// return address rule).
fn readelf_rows(path: &Path) -> Vec<(u64, String, String, String)> {
    let output = Command::new("readelf")
        .args(["--wide", "--debug-dump=frames-interp"])
        .arg(path)
        .output()
        .expect("run readelf (binutils; `cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut rows = Vec::new();
    let mut columns: Vec<&str> = Vec::new();
    // A CIE's initial rows are printed at location 0: only FDEs' count.
    let mut in_fde = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(&entry @ ("CIE" | "FDE")) = words.get(3) {
            in_fde = entry == "FDE";
            columns.clear();
            continue;
        }
        if words.first() == Some(&"LOC") {
            if in_fde {
                columns = words;
            }
            continue;
        }
        if columns.is_empty() || words.len() != columns.len() {
            continue;
        }
        let Ok(location) = u64::from_str_radix(words[0], 16) else {
            continue;
        };
        let rule = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .map_or("u", |i| words[i])
                .to_owned()
        };
        rows.push((location, words[1].to_owned(), rule("rbp"), rule("ra")));
    }
    rows
}

fn libc_path() -> std::path::PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .map(std::path::PathBuf::from)
        .expect("this test process maps libc")
}

#[test]
fn libc_rows_agree_with_readelf() {
    let path = libc_path();
    let table = compile_elf(&std::fs::read(&path).unwrap(), MAX_ROWS).unwrap();
    let rows = readelf_rows(&path);
    assert!(rows.len() > 1000, "readelf printed {} rows", rows.len());
    let mut compared = 0;
    let (mut outermost, mut too_big) = (0, 0);
    for (location, cfa, rbp, ra) in &rows {
        if ra == "u" {
            // The return address is undefined: the outermost frame.
            let row = table.lookup(*location).unwrap();
            assert_eq!(row.kind, UnwindKind::End as u8, "at {location:#x}");
            outermost += 1;
            continue;
        }
        let kind = match cfa.split_once('+') {
            Some(("rsp", _)) => UnwindKind::SpOffset,
            Some(("rbp", _)) => UnwindKind::FpOffset,
            _ => continue, // expressions: PLT and the like, checked below
        };
        let offset: i64 = cfa.split_once('+').unwrap().1.parse().unwrap();
        let Ok(offset) = i16::try_from(offset) else {
            // Frames over 32 KiB: beyond a row, so the walk stops there.
            let row = table.lookup(*location).unwrap();
            assert_eq!(row.kind, UnwindKind::Unsupported as u8, "at {location:#x}");
            too_big += 1;
            continue;
        };
        let fp_offset: i8 = match rbp.strip_prefix("c") {
            Some(n) => n.parse().unwrap(),
            None => 0,
        };
        let row = table.lookup(*location).unwrap_or_else(|| {
            panic!(
                "no row at {location:#x} ({cfa}); first {:?}",
                table.rows.first()
            )
        });
        assert_eq!(
            (row.kind, row.cfa_offset, row.fp_offset),
            (kind as u8, offset, fp_offset),
            "at {location:#x}: readelf says CFA {cfa}, rbp {rbp}"
        );
        compared += 1;
    }
    assert!(compared > 1000, "{compared} rows compared");
    assert!(outermost > 0, "libc has outermost frames (clone, start)");
    eprintln!(
        "libc: {compared} rows agree with readelf, {outermost} outermost, {too_big} frames over 32 KiB"
    );
    let signal = table
        .rows
        .iter()
        .any(|r| r.kind == UnwindKind::Signal as u8);
    assert!(signal, "libc's signal trampoline (__restore_rt) is marked");
}

#[test]
fn plt_stubs_get_the_plt_rule() {
    let dir = tempfile::tempdir().unwrap();
    let source = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n";
    let data = build(dir.path(), "plt", source, &["-O2", "-Wl,-z,lazy"]);
    let file = object::File::parse(&*data).unwrap();
    let plt = file
        .section_by_name(".plt")
        .expect("a .plt section")
        .address();
    let table = compile_elf(&data, MAX_ROWS).unwrap();
    // The first PLT entry pushes twice; the stubs after it share the rule.
    let row = table.lookup(plt + 16).expect("a row for the PLT");
    assert_eq!(row.kind, UnwindKind::Plt as u8, "{row:?}");
    assert!((10..=11).contains(&row.fp_offset), "{row:?}");
}

/// A CIE (`zR`, the given pointer encoding) and one FDE for 16 bytes at
/// address 0x1000, as an assembler lays them out.
fn cie_and_fde(pointer_encoding: u8) -> Vec<u8> {
    let mut cie = vec![0, 0, 0, 0]; // CIE id
    cie.extend([1, b'z', b'R', 0, 1, 0x78, 16, 1, pointer_encoding]);
    cie.extend([0x0c, 7, 8, 0x90, 1]); // def_cfa rsp+8; rip at cfa-8
    while !(cie.len() + 4).is_multiple_of(8) {
        cie.push(0); // DW_CFA_nop
    }
    let mut bytes = (cie.len() as u32).to_le_bytes().to_vec();
    bytes.extend(cie);
    let fde_start = bytes.len();
    let mut fde = ((fde_start + 4) as u32).to_le_bytes().to_vec(); // CIE pointer
    fde.extend(0x1000u32.to_le_bytes()); // udata4 initial location
    fde.extend(16u32.to_le_bytes());
    fde.push(0); // augmentation data length
    while !(fde.len() + 4).is_multiple_of(8) {
        fde.push(0);
    }
    bytes.extend((fde.len() as u32).to_le_bytes());
    bytes.extend(fde);
    bytes
}

#[test]
fn a_hand_made_eh_frame_compiles() {
    let table = compile(&cie_and_fde(0x03), &SectionAddresses::default(), MAX_ROWS).unwrap();
    assert_eq!(
        table.rows,
        [
            UnwindRow::new(0x1000, UnwindKind::SpOffset, 8, 0),
            UnwindRow::new(0x1010, UnwindKind::None, 0, 0),
        ]
    );
}

#[test]
fn malformed_eh_frames_are_errors_not_crashes() {
    let sections = SectionAddresses::default();
    let good = cie_and_fde(0x03);
    // Truncated inside the FDE.
    let err = compile(&good[..good.len() - 6], &sections, MAX_ROWS).unwrap_err();
    assert!(matches!(err, CompileError::Malformed(_)), "{err}");
    // A pointer encoding that does not exist.
    let err = compile(&cie_and_fde(0x0f), &sections, MAX_ROWS).unwrap_err();
    assert!(err.to_string().contains("malformed .eh_frame"), "{err}");
    // A length claiming gigabytes.
    let mut huge = good.clone();
    huge[..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(compile(&huge, &sections, MAX_ROWS).is_err());
    // More rows than allowed.
    let err = compile(&good, &sections, 1).unwrap_err();
    assert!(err.to_string().contains("exceed 1 rows"), "{err}");
    // Not ELF at all, and no .eh_frame.
    assert!(matches!(
        compile_elf(b"not an ELF", MAX_ROWS),
        Err(CompileError::Elf(_))
    ));
    // Random bytes never panic.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state as usize) % bytes.len();
            bytes[at] = (state >> 32) as u8;
        }
        let _ = compile(&bytes, &sections, 1 << 12);
    }
}
