//! The binary structs that carry .torrent files (notes §5.2, §5.4).
//!
//! * 1015 send_torrent: 150 bytes, packed little-endian, then the torrent.
//! * 9014 torrent_upload (the document's binary variant): 66 bytes, then
//!   the torrent.
//!
//! Parsing is strict: every length must add up, every uuid must be
//! canonical, and enumerations must be in range, so nothing built from
//! these fields (file names above all) can be steered by a bad packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::disk::name::{parse_uuid, MAX_LEVEL};

pub const SEND_TORRENT_LEN: usize = 150;
pub const UPLOAD_TORRENT_LEN: usize = 66;
/// A .torrent for a 30 GB image with 4 MiB pieces is about 150 KB.
pub const MAX_TORRENT: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructError {
    #[error("{what}: {len} bytes, shorter than the {need}-byte header")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{what}: data_len {declared} but {actual} bytes follow the header")]
    Length {
        what: &'static str,
        declared: u64,
        actual: usize,
    },
    #[error(
        "{what}: torrent of {0} bytes is larger than {MAX_TORRENT}",
        what = "torrent"
    )]
    TooLarge(usize),
    #[error("{field}: {value:?} is not a canonical uuid")]
    Uuid { field: &'static str, value: String },
    #[error("{field} {value} is out of range")]
    Range { field: &'static str, value: i64 },
    #[error("the payload is not a bencoded dictionary")]
    NotTorrent,
}

/// 1015 send_torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTorrent {
    pub uuid: String,
    /// 0 system, 1 data, 2 share.
    pub disk_type: i8,
    pub sys_type: i8,
    pub dif_level: i32,
    /// Sectors.
    pub real_size: u64,
    pub space_size: u64,
    pub file_size: u64,
    /// Echoed as the string `batch_no` of the reply.
    pub task_uuid: String,
    pub group_uuid: String,
    pub operate_id: u32,
    pub torrent: Bytes,
}

/// 9014 torrent_upload, binary variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTorrent {
    pub uuid: String,
    pub disk_type: i8,
    pub sys_type: i8,
    pub dif_level: i32,
    pub real_size: u64,
    pub reserve_size: u64,
    pub torrent: Bytes,
}

fn uuid_field(field: &'static str, raw: &[u8]) -> Result<String, StructError> {
    let text = std::str::from_utf8(raw).map_err(|_| StructError::Uuid {
        field,
        value: String::from_utf8_lossy(raw).into_owned(),
    })?;
    parse_uuid(text).map_err(|_| StructError::Uuid {
        field,
        value: text.chars().filter(|c| !c.is_control()).collect(),
    })?;
    Ok(text.to_string())
}

fn check_common(disk_type: i8, dif_level: i32) -> Result<(), StructError> {
    if !(0..=2).contains(&disk_type) {
        return Err(StructError::Range {
            field: "type",
            value: i64::from(disk_type),
        });
    }
    if !(0..=i32::from(MAX_LEVEL)).contains(&dif_level) {
        return Err(StructError::Range {
            field: "dif_level",
            value: i64::from(dif_level),
        });
    }
    Ok(())
}

fn check_torrent(what: &'static str, declared: u64, rest: &[u8]) -> Result<Bytes, StructError> {
    if declared != rest.len() as u64 {
        return Err(StructError::Length {
            what,
            declared,
            actual: rest.len(),
        });
    }
    if rest.len() > MAX_TORRENT {
        return Err(StructError::TooLarge(rest.len()));
    }
    if rest.first() != Some(&b'd') || rest.last() != Some(&b'e') {
        return Err(StructError::NotTorrent);
    }
    Ok(Bytes::copy_from_slice(rest))
}

impl SendTorrent {
    pub fn parse(payload: &[u8]) -> Result<SendTorrent, StructError> {
        if payload.len() < SEND_TORRENT_LEN {
            return Err(StructError::Short {
                what: "send_torrent",
                len: payload.len(),
                need: SEND_TORRENT_LEN,
            });
        }
        let (head, rest) = payload.split_at(SEND_TORRENT_LEN);
        let uuid = uuid_field("uuid", &head[0..36])?;
        let mut b = &head[36..74];
        let disk_type = b.get_i8();
        let sys_type = b.get_i8();
        let dif_level = b.get_i32_le();
        let real_size = b.get_u64_le();
        let space_size = b.get_u64_le();
        let file_size = b.get_u64_le();
        let data_len = b.get_u64_le();
        let task_uuid = uuid_field("task_uuid", &head[74..110])?;
        let group_uuid = uuid_field("group_uuid", &head[110..146])?;
        let operate_id = (&head[146..150]).get_u32_le();
        check_common(disk_type, dif_level)?;
        let torrent = check_torrent("send_torrent", data_len, rest)?;
        Ok(SendTorrent {
            uuid,
            disk_type,
            sys_type,
            dif_level,
            real_size,
            space_size,
            file_size,
            task_uuid,
            group_uuid,
            operate_id,
            torrent,
        })
    }

    /// The wire form, as the server sends it.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(SEND_TORRENT_LEN + self.torrent.len());
        put_fixed(&mut out, &self.uuid);
        out.put_i8(self.disk_type);
        out.put_i8(self.sys_type);
        out.put_i32_le(self.dif_level);
        out.put_u64_le(self.real_size);
        out.put_u64_le(self.space_size);
        out.put_u64_le(self.file_size);
        out.put_u64_le(self.torrent.len() as u64);
        put_fixed(&mut out, &self.task_uuid);
        put_fixed(&mut out, &self.group_uuid);
        out.put_u32_le(self.operate_id);
        out.put_slice(&self.torrent);
        out.freeze()
    }
}

impl UploadTorrent {
    pub fn parse(payload: &[u8]) -> Result<UploadTorrent, StructError> {
        if payload.len() < UPLOAD_TORRENT_LEN {
            return Err(StructError::Short {
                what: "torrent_upload",
                len: payload.len(),
                need: UPLOAD_TORRENT_LEN,
            });
        }
        let (head, rest) = payload.split_at(UPLOAD_TORRENT_LEN);
        let uuid = uuid_field("uuid", &head[0..36])?;
        let mut b = &head[36..66];
        let disk_type = b.get_i8();
        let sys_type = b.get_i8();
        let dif_level = b.get_i32_le();
        let real_size = b.get_u64_le();
        let reserve_size = b.get_u64_le();
        let data_len = b.get_u64_le();
        check_common(disk_type, dif_level)?;
        let torrent = check_torrent("torrent_upload", data_len, rest)?;
        Ok(UploadTorrent {
            uuid,
            disk_type,
            sys_type,
            dif_level,
            real_size,
            reserve_size,
            torrent,
        })
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(UPLOAD_TORRENT_LEN + self.torrent.len());
        put_fixed(&mut out, &self.uuid);
        out.put_i8(self.disk_type);
        out.put_i8(self.sys_type);
        out.put_i32_le(self.dif_level);
        out.put_u64_le(self.real_size);
        out.put_u64_le(self.reserve_size);
        out.put_u64_le(self.torrent.len() as u64);
        out.put_slice(&self.torrent);
        out.freeze()
    }
}

/// A 36-byte text field, not NUL-terminated (shorter text is NUL-padded).
fn put_fixed(out: &mut BytesMut, s: &str) {
    let mut field = [0u8; 36];
    let n = s.len().min(36);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    out.put_slice(&field);
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
    const T: &str = "3f2a4c1e-0b6d-4e8f-9a7b-1c2d3e4f5a6b";
    const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";
    const TORRENT: &[u8] = b"d8:announce0:4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee";

    fn sample() -> SendTorrent {
        SendTorrent {
            uuid: U.into(),
            disk_type: 0,
            sys_type: 3,
            dif_level: 1,
            real_size: 41943040,
            space_size: 0,
            file_size: 2048,
            task_uuid: T.into(),
            group_uuid: G.into(),
            operate_id: 7,
            torrent: Bytes::from_static(TORRENT),
        }
    }

    #[test]
    fn golden_layout_and_round_trip() {
        let s = sample();
        let b = s.encode();
        assert_eq!(b.len(), 150 + TORRENT.len());
        assert_eq!(&b[0..36], U.as_bytes());
        assert_eq!(b[36], 0); // type
        assert_eq!(b[37], 3); // sys_type
        assert_eq!(&b[38..42], &1i32.to_le_bytes());
        assert_eq!(&b[42..50], &41943040u64.to_le_bytes());
        assert_eq!(&b[58..66], &2048u64.to_le_bytes());
        assert_eq!(&b[66..74], &(TORRENT.len() as u64).to_le_bytes());
        assert_eq!(&b[74..110], T.as_bytes());
        assert_eq!(&b[110..146], G.as_bytes());
        assert_eq!(&b[146..150], &7u32.to_le_bytes());
        assert_eq!(SendTorrent::parse(&b), Ok(s));
    }

    #[test]
    fn refuses_bad_structs() {
        let good = sample().encode().to_vec();
        assert!(matches!(
            SendTorrent::parse(&good[..149]),
            Err(StructError::Short { .. })
        ));
        let mut longer = good.clone();
        longer.push(b'x');
        assert!(matches!(
            SendTorrent::parse(&longer),
            Err(StructError::Length { .. })
        ));
        let mut bad_uuid = good.clone();
        bad_uuid[0..3].copy_from_slice(b"../");
        assert!(matches!(
            SendTorrent::parse(&bad_uuid),
            Err(StructError::Uuid { field: "uuid", .. })
        ));
        let mut upper = good.clone();
        upper[0] = b'A';
        assert!(matches!(
            SendTorrent::parse(&upper),
            Err(StructError::Uuid { .. })
        ));
        let mut bad_group = good.clone();
        bad_group[110] = 0;
        assert!(matches!(
            SendTorrent::parse(&bad_group),
            Err(StructError::Uuid {
                field: "group_uuid",
                ..
            })
        ));
        let mut bad_type = good.clone();
        bad_type[36] = 7;
        assert!(matches!(
            SendTorrent::parse(&bad_type),
            Err(StructError::Range { field: "type", .. })
        ));
        let mut bad_level = good.clone();
        bad_level[38..42].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(matches!(
            SendTorrent::parse(&bad_level),
            Err(StructError::Range {
                field: "dif_level",
                ..
            })
        ));
        let mut huge = good.clone();
        huge[66..74].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            SendTorrent::parse(&huge),
            Err(StructError::Length { .. })
        ));
        let mut not_torrent = good[..150].to_vec();
        not_torrent.extend_from_slice(b"xy");
        not_torrent[66..74].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(
            SendTorrent::parse(&not_torrent),
            Err(StructError::NotTorrent)
        );
    }

    #[test]
    fn upload_struct_round_trip_and_checks() {
        let u = UploadTorrent {
            uuid: U.into(),
            disk_type: 0,
            sys_type: 1,
            dif_level: 2,
            real_size: 99,
            reserve_size: 5,
            torrent: Bytes::from_static(TORRENT),
        };
        let b = u.encode();
        assert_eq!(b.len(), 66 + TORRENT.len());
        assert_eq!(UploadTorrent::parse(&b), Ok(u));
        assert!(UploadTorrent::parse(&b[..65]).is_err());
        let mut bad = b.to_vec();
        bad[36] = 0xff;
        assert!(matches!(
            UploadTorrent::parse(&bad),
            Err(StructError::Range { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5000 {
            let n = rng.usize(0..400);
            let v: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            let _ = SendTorrent::parse(&v);
            let _ = UploadTorrent::parse(&v);
        }
    }
}
