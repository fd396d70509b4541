use std::time::Duration;

use crate::peer_connection::with_timeout;
use anyhow::Context;
use buffers::ByteBuf;
use peer_binary_protocol::{
    Handshake, MessageBorrowed, MessageDeserializeError, PIECE_MESSAGE_DEFAULT_LEN,
};
use librqbit_core::constants::CHUNK_SIZE;
use tokio::io::AsyncReadExt;

/// voi-agent patch 14: see `ReadBuf::check_length_prefix`.
const MAX_BITFIELD_BYTES: usize = (2 << 20) / 20 / 8 + 1;
const MAX_EXTENDED_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_OTHER_MESSAGE_BYTES: usize = 16 * 1024;

pub struct ReadBuf {
    buf: Vec<u8>,
    // How many bytes into the buffer we have read from the connection.
    // New reads should go past this.
    filled: usize,
    // How many bytes have we successfully deserialized.
    processed: usize,
}

impl ReadBuf {
    pub fn new() -> Self {
        Self {
            buf: vec![0; PIECE_MESSAGE_DEFAULT_LEN * 2],
            filled: 0,
            processed: 0,
        }
    }

    fn prepare_for_read(&mut self, need_additional_bytes: usize) {
        // Ensure the buffer starts from the to-be-deserialized message.
        if self.processed > 0 {
            if self.filled > self.processed {
                self.buf.copy_within(self.processed..self.filled, 0);
            }
            self.filled -= self.processed;
            self.processed = 0;
        }

        // Ensure we have enough capacity to deserialize the message.
        if self.buf.len() < self.filled + need_additional_bytes {
            self.buf.reserve(need_additional_bytes);
            self.buf.resize(self.buf.capacity(), 0);
        }
    }

    // Read the BT handshake.
    // This MUST be run as the first operation on the buffer.
    pub async fn read_handshake(
        &mut self,
        mut conn: impl AsyncReadExt + Unpin,
        timeout: Duration,
    ) -> anyhow::Result<Handshake<ByteBuf<'_>>> {
        self.filled = with_timeout(timeout, conn.read(&mut self.buf))
            .await
            .context("error reading handshake")?;
        if self.filled == 0 {
            anyhow::bail!("peer disconnected while reading handshake");
        }
        let (h, size) = Handshake::deserialize(&self.buf[..self.filled]).map_err(|e| {
            anyhow::anyhow!(
                "error deserializing handshake: {:?} hadshake data {:?}",
                e,
                &self.buf[..self.filled.min(19)]
            )
        })?;
        self.processed = size;
        Ok(h)
    }

    /// voi-agent patch 14: the most a message of this type can be, so a
    /// peer's length prefix cannot make us allocate what it likes (upstream
    /// zero-filled up to 4 GiB for one 5-byte message). A piece carries at
    /// most one chunk; a bitfield at most one bit per piece of the largest
    /// torrent a layer may have (2 MiB of SHA-1s); an extended message (the
    /// ut_metadata and PEX dictionaries) a metadata block and some keys.
    fn check_length_prefix(&self) -> anyhow::Result<()> {
        let pending = &self.buf[self.processed..self.filled];
        if pending.len() < 5 {
            return Ok(());
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len == 0 {
            return Ok(());
        }
        let id = pending[4];
        let max = match id {
            0..=3 => 1,
            4 => 5,
            5 => 1 + MAX_BITFIELD_BYTES,
            6 | 8 => 13,
            7 => 9 + CHUNK_SIZE as usize,
            9 => 3,
            20 => MAX_EXTENDED_MESSAGE_BYTES,
            _ => MAX_OTHER_MESSAGE_BYTES,
        };
        if len > max {
            anyhow::bail!(
                "peer sent a message of type {id} announcing {len} bytes; the most it can be is {max}"
            );
        }
        Ok(())
    }

    // Read a message into the buffer, try to deserialize it and call the callback on it.
    pub async fn read_message(
        &mut self,
        mut conn: impl AsyncReadExt + Unpin,
        timeout: Duration,
    ) -> anyhow::Result<MessageBorrowed<'_>> {
        loop {
            let need_additional_bytes =
                match MessageBorrowed::deserialize(&self.buf[self.processed..self.filled]) {
                    Err(MessageDeserializeError::NotEnoughData(d, _)) => d,
                    Ok((msg, size)) => {
                        self.processed += size;

                        // Rust's borrow checker can't do this early return so resort to unsafe.
                        // This erases the lifetime so that it's happy.
                        let msg: MessageBorrowed<'_> =
                            unsafe { std::mem::transmute(msg as MessageBorrowed<'_>) };
                        return Ok(msg);
                    }
                    Err(e) => return Err(e.into()),
                };
            self.check_length_prefix()?;
            self.prepare_for_read(need_additional_bytes);
            debug_assert!(!self.buf[self.filled..].is_empty());
            let size = with_timeout(timeout, conn.read(&mut self.buf[self.filled..]))
                .await
                .context("error reading from peer")?;
            if size == 0 {
                anyhow::bail!("disconnected while reading, read so far: {}", self.filled)
            }
            self.filled += size;
        }
    }
}
