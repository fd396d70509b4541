#![no_main]
//! The JSON bodies the reference server reads from terminals (login, 9xxx
//! requests, command replies), from arbitrary bytes.

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voi::protocol::messages::*;
use voi::protocol::Envelope;

fn try_all(v: &Value) {
    macro_rules! each {
        ($($t:ty),* $(,)?) => { $( let _ = <$t as serde::Deserialize>::deserialize(v); )* };
    }
    each!(
        LoginReq,
        MacReq,
        ConfigVersionReq,
        DesktopGroupListReq,
        VerifyAdminUserReq,
        OperateAuthReq,
        OrderConfirmReq,
        GetDesktopInfoReq,
        TaskResultReq,
        CheckUploadStateReq,
        PToVStartReq,
        PToVStateReq,
        DiffDiskReq,
        DesktopLoginReq,
        BtTaskStateReq,
        PutDesktopGroupListReq,
        BtUploadStateReq,
        QueryTeachPcReq,
        UpdatePerformanceReq,
        TorrentUploadJson,
        Envelope<Value>,
        Envelope<CommandReplyData>,
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        try_all(&v);
    }
});
