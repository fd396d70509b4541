//! qcow2 header facts: virtual size, cluster size, backing file and format.
//!
//! The `qcow` crate does the parsing, but it also reads the whole L1 table
//! and snapshot list, sized by the header. A corrupt or hostile file could
//! make it allocate gigabytes, so the raw header is bounds-checked against
//! the file's real size first.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageHeader {
    pub version: u32,
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Bytes the file occupies on disk (allocated blocks).
    pub allocated: u64,
    pub file_len: u64,
}

impl ImageHeader {
    /// The backing file's own name, without any directory: the parent
    /// layer's name in a chain (foreign servers may write absolute paths).
    pub fn backing_name(&self) -> Option<String> {
        self.backing_file.as_deref().map(|b| {
            Path::new(b)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not a qcow2 image ({1})")]
    Invalid(String, String),
}

const MAGIC: &[u8; 4] = b"QFI\xfb";

fn be32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

pub fn read_header(path: &Path) -> Result<ImageHeader, HeaderError> {
    let name = path.display().to_string();
    let io = |e| HeaderError::Io(name.clone(), e);
    let bad = |why: String| HeaderError::Invalid(name.clone(), why);
    let mut f = File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let len = meta.len();
    let mut raw = [0u8; 104];
    f.read_exact(&mut raw)
        .map_err(|_| bad("shorter than a header".into()))?;
    // The extension area, read here because qcow 1.2 starts it at byte 104
    // even when a v3 header is longer (qemu >= 5.1 writes 112 bytes).
    let mut ext_area = Vec::with_capacity(4096);
    {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        (&mut f).take(4096).read_to_end(&mut ext_area).map_err(io)?;
    }
    if &raw[0..4] != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = be32(&raw, 4) as u32;
    if version != 2 && version != 3 {
        return Err(bad(format!("version {version}")));
    }
    let backing_offset = be64(&raw, 8);
    let backing_size = be32(&raw, 16);
    let cluster_bits = be32(&raw, 20);
    let l1_size = be32(&raw, 36);
    let l1_offset = be64(&raw, 40);
    let nb_snapshots = be32(&raw, 60);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!("cluster_bits {cluster_bits}")));
    }
    if l1_size.saturating_mul(8).saturating_add(l1_offset) > len {
        return Err(bad("L1 table beyond end of file".into()));
    }
    if backing_size > 1023
        || (backing_size > 0 && backing_offset.saturating_add(backing_size) > len)
    {
        return Err(bad("backing file name out of bounds".into()));
    }
    if nb_snapshots > 65536 {
        return Err(bad(format!("{nb_snapshots} snapshots")));
    }
    drop(f);
    let header_len = if version >= 3 && ext_area.len() >= 104 {
        be32(&ext_area, 100) as usize
    } else {
        72
    };

    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let q = qcow::load(&mut reader).map_err(|e| bad(e.to_string()))?;
    let cluster_size = q.cluster_size();
    let backing_file = q.backing_file().filter(|s| !s.is_empty());
    let (virtual_size, backing_format) = match &q {
        qcow::DynamicQcow::Qcow2(q2) => (
            q2.header.size,
            q2.header
                .extensions
                .iter()
                .find_map(|e| match e {
                    qcow::header_ext::HeaderExt::BackingFileFormat(fmt) => Some(fmt.clone()),
                    _ => None,
                })
                .or_else(|| backing_format_ext(&ext_area, header_len)),
        ),
        qcow::DynamicQcow::Qcow1(_) => return Err(bad("qcow version 1".into())),
    };
    use std::os::unix::fs::MetadataExt;
    Ok(ImageHeader {
        version,
        virtual_size,
        cluster_size,
        backing_file,
        backing_format,
        allocated: meta.blocks() * 512,
        file_len: len,
    })
}

/// Walks the header extensions (type u32, length u32, data padded to 8) from
/// `start` and returns the backing-format string, if present.
fn backing_format_ext(area: &[u8], start: usize) -> Option<String> {
    let mut at = start;
    while at + 8 <= area.len() {
        let kind = be32(area, at) as u32;
        let len = be32(area, at + 4) as usize;
        let data = area.get(at + 8..at + 8 + len)?;
        match kind {
            0 => return None,
            0xe279_2aca => {
                let s: Vec<u8> = data.iter().copied().filter(|b| *b != 0).collect();
                return String::from_utf8(s).ok();
            }
            _ => at += 8 + len.div_ceil(8) * 8,
        }
    }
    None
}
