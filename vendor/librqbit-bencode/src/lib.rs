mod bencode_value;
pub mod raw_value;
mod serde_bencode_de;
mod serde_bencode_ser;

pub use bencode_value::*;
pub use serde_bencode_de::*;
pub use serde_bencode_ser::*;

pub use buffers::{ByteBuf, ByteBufOwned};
