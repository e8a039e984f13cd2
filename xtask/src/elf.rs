//! A tiny reader for the section headers of 32-bit ELF files (all our bare-metal targets
//! are 32-bit), just enough to measure flash and RAM. No dependency.
//!
//! Reference: the System V ABI, "ELF header" and "Sections" (the `Elf32_Ehdr` and
//! `Elf32_Shdr` layouts).

use std::fmt;

/// `sh_type`: a symbol table (`.symtab`).
pub const SHT_SYMTAB: u32 = 2;
/// `sh_type`: the section occupies no space in the file (`.bss`).
pub const SHT_NOBITS: u32 = 8;
/// `sh_flags`: the section is writable at run time.
pub const SHF_WRITE: u32 = 0x1;
/// `sh_flags`: the section occupies memory when the program runs.
pub const SHF_ALLOC: u32 = 0x2;
/// `sh_flags`: the section holds machine instructions.
pub const SHF_EXECINSTR: u32 = 0x4;

const ELF32_EHDR_SIZE: usize = 52;
const ELF32_SHDR_SIZE: usize = 40;
const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;
const SHN_XINDEX: u16 = 0xffff;

/// Why a file could not be read as a 32-bit ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfError(String);

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ElfError {}

fn bad(message: impl Into<String>) -> ElfError {
    ElfError(message.into())
}

/// One section header, with its name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The section name (`.text`, `.bss`, ...), empty for the null section.
    pub name: String,
    /// `sh_type`.
    pub kind: u32,
    /// `sh_flags`.
    pub flags: u32,
    /// `sh_addr`: where the section lives when the program runs.
    pub addr: u32,
    /// `sh_offset`: where the section's bytes are in the file.
    pub offset: u32,
    /// `sh_size` in bytes.
    pub size: u32,
    /// `sh_link`: for a symbol table, the index of its string table.
    pub link: u32,
}

impl Section {
    /// Whether the section occupies memory when the program runs.
    pub fn is_alloc(&self) -> bool {
        self.flags & SHF_ALLOC != 0
    }

    /// Whether the section holds code.
    pub fn is_exec(&self) -> bool {
        self.flags & SHF_EXECINSTR != 0
    }

    /// Whether the section is writable at run time.
    pub fn is_write(&self) -> bool {
        self.flags & SHF_WRITE != 0
    }

    /// Whether the section has no bytes in the file (zero-initialised, like `.bss`).
    pub fn is_nobits(&self) -> bool {
        self.kind == SHT_NOBITS
    }
}

/// What the size report needs from an ELF32 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf32 {
    /// `e_machine` (40 = ARM, 243 = RISC-V).
    pub machine: u16,
    /// `e_entry`: the address execution starts at (0 when the linker found no entry).
    pub entry: u32,
    /// Every section header, in file order, the null section first.
    pub sections: Vec<Section>,
    big_endian: bool,
}

#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn slice<const N: usize>(&self, at: usize) -> Result<[u8; N], ElfError> {
        at.checked_add(N)
            .and_then(|end| self.bytes.get(at..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                bad(format!(
                    "truncated: {N} bytes at offset {at} are past the end"
                ))
            })
    }

    fn u16(&self, at: usize) -> Result<u16, ElfError> {
        let raw = self.slice::<2>(at)?;
        Ok(if self.big_endian {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        })
    }

    fn u32(&self, at: usize) -> Result<u32, ElfError> {
        let raw = self.slice::<4>(at)?;
        Ok(if self.big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    }
}

struct RawHeader {
    name: u32,
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
    link: u32,
}

fn usize_of(value: u32) -> usize {
    // A u32 always fits in usize on the hosts the xtask runs on (32 and 64 bits).
    value as usize
}

impl Elf32 {
    /// Reads the ELF header and the section headers of a 32-bit ELF file, little- or
    /// big-endian. Every offset is bounds-checked: a malformed file is an error, never a
    /// panic.
    pub fn parse(bytes: &[u8]) -> Result<Elf32, ElfError> {
        if bytes.len() < ELF32_EHDR_SIZE || bytes[..4] != *b"\x7fELF" {
            return Err(bad("not an ELF file (no \\x7fELF magic)"));
        }
        match bytes[4] {
            1 => {}
            2 => return Err(bad("a 64-bit ELF file; only ELF32 is supported")),
            class => return Err(bad(format!("unknown ELF class {class}"))),
        }
        let big_endian = match bytes[5] {
            1 => false,
            2 => true,
            data => return Err(bad(format!("unknown ELF data encoding {data}"))),
        };
        let r = Reader { bytes, big_endian };
        let machine = r.u16(0x12)?;
        let entry = r.u32(0x18)?;
        let shoff = usize_of(r.u32(0x20)?);
        let shentsize = usize::from(r.u16(0x2e)?);
        let mut shnum = usize::from(r.u16(0x30)?);
        let mut shstrndx = r.u16(0x32)?;
        if shoff == 0 {
            return Ok(Elf32 {
                machine,
                entry,
                sections: Vec::new(),
                big_endian,
            });
        }
        if shentsize < ELF32_SHDR_SIZE {
            return Err(bad(format!(
                "section header size {shentsize} < {ELF32_SHDR_SIZE}"
            )));
        }
        let header_at = |index: usize| -> Result<RawHeader, ElfError> {
            let base = index
                .checked_mul(shentsize)
                .and_then(|o| o.checked_add(shoff))
                .ok_or_else(|| bad("section header offset overflows"))?;
            Ok(RawHeader {
                name: r.u32(base)?,
                kind: r.u32(base + 4)?,
                flags: r.u32(base + 8)?,
                addr: r.u32(base + 12)?,
                offset: r.u32(base + 16)?,
                size: r.u32(base + 20)?,
                link: r.u32(base + 24)?,
            })
        };
        // Extended numbering: with 0xff00 sections or more, the real count lives in the
        // null section's sh_size and the real string table index in its sh_link.
        if shnum == 0 || shstrndx == SHN_XINDEX {
            let null = header_at(0)?;
            if shnum == 0 {
                shnum = usize_of(null.size);
            }
            if shstrndx == SHN_XINDEX {
                shstrndx = u16::try_from(null.link).unwrap_or(SHN_UNDEF);
            }
        }
        let table_end = shnum
            .checked_mul(shentsize)
            .and_then(|len| len.checked_add(shoff))
            .ok_or_else(|| bad("section header table size overflows"))?;
        if table_end > bytes.len() {
            return Err(bad(format!(
                "{shnum} section headers at offset {shoff} run past the end of the file"
            )));
        }
        let raw = (0..shnum).map(header_at).collect::<Result<Vec<_>, _>>()?;
        let names: &[u8] = if shstrndx == SHN_UNDEF || shstrndx >= SHN_LORESERVE {
            &[]
        } else {
            let table = raw.get(usize::from(shstrndx)).ok_or_else(|| {
                bad(format!(
                    "section name table index {shstrndx} >= {shnum} sections"
                ))
            })?;
            let start = usize_of(table.offset);
            start
                .checked_add(usize_of(table.size))
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(|| bad("section name table runs past the end of the file"))?
        };
        let sections = raw
            .into_iter()
            .map(|h| Section {
                name: c_string_at(names, usize_of(h.name)),
                kind: h.kind,
                flags: h.flags,
                addr: h.addr,
                offset: h.offset,
                size: h.size,
                link: h.link,
            })
            .collect();
        Ok(Elf32 {
            machine,
            entry,
            sections,
            big_endian,
        })
    }

    /// The bytes of a section with contents in `file` (the bytes this was parsed from).
    fn contents<'f>(&self, file: &'f [u8], section: &Section) -> Option<&'f [u8]> {
        if section.is_nobits() {
            return None;
        }
        let start = usize_of(section.offset);
        file.get(start..start.checked_add(usize_of(section.size))?)
    }

    /// The value of the 4-byte static called `name` (looked up in `.symtab`), read from
    /// `file`, the bytes this was parsed from. `None` when there is no such symbol, it is
    /// not 4 bytes, or it lives in a section without contents.
    pub fn read_u32_symbol(&self, file: &[u8], name: &str) -> Option<u32> {
        const SYM_SIZE: usize = 16;
        let symtab = self.sections.iter().find(|s| s.kind == SHT_SYMTAB)?;
        let strtab = self.sections.get(usize_of(symtab.link))?;
        let names = self.contents(file, strtab)?;
        let symbols = self.contents(file, symtab)?;
        let r = Reader {
            bytes: symbols,
            big_endian: self.big_endian,
        };
        let symbol = (0..symbols.len() / SYM_SIZE)
            .map(|i| i * SYM_SIZE)
            .find(|&at| {
                r.u32(at)
                    .is_ok_and(|name_at| c_string_at(names, usize_of(name_at)) == name)
            })?;
        let value = r.u32(symbol + 4).ok()?;
        let size = r.u32(symbol + 8).ok()?;
        let shndx = r.u16(symbol + 14).ok()?;
        if size != 4 || shndx == SHN_UNDEF || shndx >= SHN_LORESERVE {
            return None;
        }
        let section = self.sections.get(usize::from(shndx))?;
        let within = value.checked_sub(section.addr)?;
        let data = Reader {
            bytes: self.contents(file, section)?,
            big_endian: self.big_endian,
        };
        data.u32(usize_of(within)).ok()
    }

    /// How much memory the program needs, by the rules of binutils' `size` (Berkeley
    /// format), with read-only data split from code.
    pub fn footprint(&self) -> Footprint {
        let mut footprint = Footprint::default();
        for section in self.sections.iter().filter(|s| s.is_alloc()) {
            let size = u64::from(section.size);
            if section.is_nobits() {
                footprint.bss += size;
            } else if section.is_write() {
                footprint.data += size;
            } else if section.is_exec() {
                footprint.text += size;
            } else {
                footprint.rodata += size;
            }
        }
        footprint
    }
}

/// Bytes of each kind of memory a program occupies (sections with `SHF_ALLOC` only, so
/// debug info and symbol tables count for nothing).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Code: allocated, executable sections.
    pub text: u64,
    /// Constants: allocated, read-only, non-executable sections with contents (`.rodata`,
    /// `.ARM.exidx`, ...).
    pub rodata: u64,
    /// Initialised statics: allocated, writable sections with contents. They take RAM at
    /// run time and their initial values take flash.
    pub data: u64,
    /// Zeroed statics: allocated sections with no contents in the file (`.bss`).
    pub bss: u64,
}

impl Footprint {
    /// Flash: code, constants, and the initial values of `.data` copied to RAM at boot.
    pub fn flash(&self) -> u64 {
        self.text + self.rodata + self.data
    }

    /// Static RAM: `.data` and `.bss` (stack and heap not included).
    pub fn ram(&self) -> u64 {
        self.data + self.bss
    }
}

fn c_string_at(table: &[u8], offset: usize) -> String {
    let tail = table.get(offset..).unwrap_or(&[]);
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHT_PROGBITS: u32 = 1;
    const SHT_STRTAB: u32 = 3;

    /// One section for [`build`]: name, type, flags, address, contents (or, for
    /// `SHT_NOBITS`, just a length), and `sh_link`.
    struct Spec {
        name: &'static str,
        kind: u32,
        flags: u32,
        addr: u32,
        contents: Vec<u8>,
        link: u32,
    }

    fn spec(name: &'static str, kind: u32, flags: u32, contents: Vec<u8>) -> Spec {
        Spec {
            name,
            kind,
            flags,
            addr: 0x1000,
            contents,
            link: 0,
        }
    }

    /// Builds a little- or big-endian ELF32 file holding the given sections (after a null
    /// section), then `.shstrtab`.
    fn build(big_endian: bool, sections: &[Spec]) -> Vec<u8> {
        let put16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let put32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let len32 = |len: usize| u32::try_from(len).expect("small");
        let mut names = vec![0u8];
        let mut name_offsets = Vec::new();
        for name in sections.iter().map(|s| s.name).chain([".shstrtab"]) {
            name_offsets.push(len32(names.len()));
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let mut file = vec![0u8; ELF32_EHDR_SIZE];
        // (offset, size) of each section's contents.
        let mut placed = Vec::new();
        for section in sections {
            if section.kind == SHT_NOBITS {
                placed.push((0, len32(section.contents.len())));
            } else {
                placed.push((len32(file.len()), len32(section.contents.len())));
                file.extend_from_slice(&section.contents);
            }
        }
        let shstrtab_offset = len32(file.len());
        file.extend_from_slice(&names);
        let shoff = len32(file.len());
        let shnum = u16::try_from(sections.len() + 2).expect("small");

        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 1;
        file[5] = if big_endian { 2 } else { 1 };
        file[6] = 1;
        file[0x10..0x12].copy_from_slice(&put16(2)); // ET_EXEC
        file[0x12..0x14].copy_from_slice(&put16(40)); // EM_ARM
        file[0x18..0x1c].copy_from_slice(&put32(0x1_0001));
        file[0x20..0x24].copy_from_slice(&put32(shoff));
        file[0x2e..0x30].copy_from_slice(&put16(ELF32_SHDR_SIZE as u16));
        file[0x30..0x32].copy_from_slice(&put16(shnum));
        file[0x32..0x34].copy_from_slice(&put16(shnum - 1));

        let mut header = |fields: [u32; 10]| {
            for field in fields {
                file.extend_from_slice(&put32(field));
            }
        };
        header([0; 10]);
        for (i, section) in sections.iter().enumerate() {
            let (offset, size) = placed[i];
            header([
                name_offsets[i],
                section.kind,
                section.flags,
                section.addr,
                offset,
                size,
                section.link,
                0,
                4,
                0,
            ]);
        }
        header([
            name_offsets[sections.len()],
            SHT_STRTAB,
            0,
            0,
            shstrtab_offset,
            len32(names.len()),
            0,
            0,
            1,
            0,
        ]);
        file
    }

    fn sample(big_endian: bool) -> Vec<u8> {
        let put32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let put16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        // .rodata holds 0xdeadbeef then the value of NODE_BYTES, 1234, at 0x1004.
        let mut rodata = put32(0xdead_beef).to_vec();
        rodata.extend_from_slice(&put32(1234));
        rodata.resize(200, 0);
        // .symtab: the null symbol, then NODE_BYTES (4 bytes at 0x1004 in section 3) and
        // TOO_BIG (8 bytes, same place).
        let mut symtab = vec![0u8; 16];
        for (name_at, size) in [(1u32, 4u32), (12, 8)] {
            symtab.extend_from_slice(&put32(name_at));
            symtab.extend_from_slice(&put32(0x1004));
            symtab.extend_from_slice(&put32(size));
            symtab.extend_from_slice(&[0x11, 0]);
            symtab.extend_from_slice(&put16(3));
        }
        let strtab = b"\0NODE_BYTES\0TOO_BIG\0".to_vec();
        let mut sections = vec![
            spec(".vector_table", SHT_PROGBITS, SHF_ALLOC, vec![0; 0x40]),
            spec(
                ".text",
                SHT_PROGBITS,
                SHF_ALLOC | SHF_EXECINSTR,
                vec![0; 1000],
            ),
            spec(".rodata", SHT_PROGBITS, SHF_ALLOC, rodata),
            spec(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, vec![0; 16]),
            spec(".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, vec![0; 300]),
            spec(".debug_info", SHT_PROGBITS, 0, vec![0; 500]),
            spec(".comment", SHT_PROGBITS, 0x30, vec![0; 20]),
            spec(".symtab", SHT_SYMTAB, 0, symtab),
            spec(".strtab", SHT_STRTAB, 0, strtab),
        ];
        for section in sections.iter_mut().filter(|s| s.flags & SHF_ALLOC == 0) {
            section.addr = 0;
        }
        sections[7].link = 9;
        build(big_endian, &sections)
    }

    #[test]
    fn parses_sections_and_sums_the_footprint() {
        for big_endian in [false, true] {
            let elf = Elf32::parse(&sample(big_endian)).expect("valid ELF");
            assert_eq!(elf.machine, 40);
            assert_eq!(elf.entry, 0x1_0001);
            let names: Vec<&str> = elf.sections.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "",
                    ".vector_table",
                    ".text",
                    ".rodata",
                    ".data",
                    ".bss",
                    ".debug_info",
                    ".comment",
                    ".symtab",
                    ".strtab",
                    ".shstrtab"
                ]
            );
            let text = elf.sections.iter().find(|s| s.name == ".text");
            assert_eq!(text.map(|s| s.size), Some(1000));
            let f = elf.footprint();
            assert_eq!(
                f,
                Footprint {
                    text: 1000,
                    rodata: 0x40 + 200,
                    data: 16,
                    bss: 300
                }
            );
            assert_eq!(f.flash(), 1000 + 0x40 + 200 + 16);
            assert_eq!(f.ram(), 316);

            let file = sample(big_endian);
            assert_eq!(elf.read_u32_symbol(&file, "NODE_BYTES"), Some(1234));
            assert_eq!(elf.read_u32_symbol(&file, "TOO_BIG"), None);
            assert_eq!(elf.read_u32_symbol(&file, "MISSING"), None);
            assert_eq!(elf.read_u32_symbol(&file, ""), None);
        }
    }

    #[test]
    fn rejects_malformed_files_without_panicking() {
        assert!(Elf32::parse(b"").is_err());
        assert!(Elf32::parse(&[0u8; 64]).is_err());
        let mut elf64 = sample(false);
        elf64[4] = 2;
        assert!(Elf32::parse(&elf64).is_err());
        let good = sample(false);
        // Every truncation of a valid file is either an error or a (smaller) success,
        // never a panic.
        for len in 0..good.len() {
            let _ = Elf32::parse(&good[..len]);
        }
        assert!(Elf32::parse(&good[..good.len() - 1]).is_err());
        // Flip every byte of the header and the section table: still no panic.
        for i in 0..good.len() {
            let mut bent = good.clone();
            bent[i] ^= 0xff;
            if let Ok(elf) = Elf32::parse(&bent) {
                let _ = elf.footprint();
                let _ = elf.read_u32_symbol(&bent, "NODE_BYTES");
            }
        }
    }
}
