#![no_main]
//! Every server→terminal command (1000–1032) parsed from an arbitrary body,
//! JSON or binary, through the same parser the agent's dispatcher uses. The
//! first byte picks the command, the second the data type.

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use voi::protocol::{Frame, ServiceCode};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let commands: Vec<ServiceCode> = ServiceCode::ALL
        .iter()
        .copied()
        .filter(|c| c.is_command())
        .collect();
    let code = commands[usize::from(data[0]) % commands.len()];
    let frame = Frame {
        service_code: code as u32,
        sequence_code: 1,
        data_type: if data[1] & 1 == 0 { 1 } else { 0 },
        client_type: 3,
        req_or_res: 1,
        token: Bytes::new(),
        payload: Bytes::copy_from_slice(&data[2..]),
    };
    // Either a parsed command or a protocol error; never a panic.
    let _ = voi::agent::commands::validate(&frame);
});
