//! Service codes and result codes, named as in the API document.

macro_rules! service_codes {
    ($($variant:ident = $code:literal => $name:literal,)*) => {
        /// Every service code of the protocol. 1xxx: server→terminal commands;
        /// 9xxx: terminal→server requests.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum ServiceCode { $($variant = $code,)* }

        impl ServiceCode {
            pub const ALL: &'static [ServiceCode] = &[$(ServiceCode::$variant,)*];

            pub fn from_u32(code: u32) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)* _ => None }
            }

            /// The spec's command name, e.g. `"update_name"`.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

service_codes! {
    Wakeup = 1000 => "wakeup",
    Shutdown = 1001 => "shutdown",
    Restart = 1002 => "restart",
    Delete = 1003 => "delete",
    UpdateName = 1004 => "update_name",
    UpdateConfig = 1005 => "update_config",
    EnterMaintenanceMode = 1006 => "enter_maintenance_mode",
    ClearAllDesktop = 1007 => "clear_all_desktop",
    DownloadDesktop = 1008 => "download_desktop",
    CancelDownloadDesktop = 1009 => "cancel_download_desktop",
    AddDataDisk = 1010 => "add_data_disk",
    Order = 1011 => "order",
    UpdateIp = 1012 => "update_ip",
    UpdateDifferenceDisk = 1013 => "update_difference_disk",
    PxeStart = 1014 => "pxe_start",
    SendTorrent = 1015 => "send_torrent",
    UploadDesktop = 1016 => "upload_desktop",
    SendDesktop = 1017 => "send_desktop",
    PushTaskResult = 1018 => "push_task_result",
    EnterMaintain = 1019 => "enter_maintain",
    UploadDisk = 1020 => "upload_disk",
    BtTaskComplete = 1021 => "bt_task_complete",
    WatermarkSwitch = 1022 => "watermark_switch",
    SshUploadDesktop = 1023 => "ssh_upload_desktop",
    UpdateDesktopGroupInfo = 1024 => "update_desktop_group_info",
    CancelSendDesktop = 1025 => "cancel_send_desktop",
    CancelPToV = 1026 => "cancel_p_to_v",
    TerminalUpgrade = 1030 => "terminal_upgrade",
    ClearTargetDesktop = 1031 => "clear_target_desktop",
    SendDesktopTcp = 1032 => "send_desktop_tcp",
    // Ours, outside the vendor's ranges, sent only to terminals that
    // announced them (9004 `wake`); notes §12.
    WakeRelay = 1900 => "voi_wake_relay",
    PowerNotice = 1901 => "voi_power_notice",
    Heartbeat = 9000 => "heartbeat",
    TerminalLogin = 9001 => "terminal_login",
    TerminalLogout = 9002 => "terminal_logout",
    GetDateTime = 9003 => "get_date_time",
    GetConfigVersionId = 9004 => "get_config_version_id",
    GetConfigInfo = 9005 => "get_config_info",
    UpdateConfigInfo = 9006 => "update_config_info",
    GetDesktopGroupList = 9007 => "get_desktop_group_list",
    VerifyAdminUser = 9008 => "verify_admin_user",
    OrderConfirm = 9009 => "order_confirm",
    OrderQuery = 9010 => "order_query",
    SyncDesktopInfo = 9011 => "sync_desktop_info",
    GetDesktopInfo = 9012 => "get_desktop_info",
    DesktopUpload = 9013 => "desktop_upload",
    TorrentUpload = 9014 => "torrent_upload",
    TaskResult = 9015 => "task_result",
    OperateAuth = 9016 => "operate_auth",
    InitDesktop = 9017 => "init_desktop",
    CheckUploadState = 9018 => "check_upload_state",
    BtTracker = 9019 => "bt_tracker",
    PToVStart = 9020 => "p_to_v_start",
    PToVState = 9021 => "p_to_v_state",
    DiffDiskUpload = 9022 => "diff_disk_upload",
    DiffDiskDownload = 9023 => "diff_disk_download",
    DesktopLogin = 9024 => "desktop_login",
    BtTaskState = 9025 => "bt_task_state",
    PutDesktopGroupList = 9026 => "put_desktop_group_list",
    BtUploadState = 9027 => "bt_upload_state",
    QueryTeachPc = 9028 => "query_teach_pc",
    UpdatePerformance = 9029 => "update_performance",
    UploadLog = 9999 => "upload_log",
}

impl ServiceCode {
    /// Commands whose effect is the terminal going down (or booting
    /// elsewhere).
    pub fn is_power(self) -> bool {
        matches!(
            self,
            ServiceCode::Shutdown
                | ServiceCode::Restart
                | ServiceCode::PxeStart
                | ServiceCode::EnterMaintenanceMode
                | ServiceCode::EnterMaintain
        )
    }

    /// Server→terminal command (1xxx).
    pub fn is_command(self) -> bool {
        (1000..2000).contains(&(self as u32))
    }

    /// A command of ours that the vendor's terminals do not know; sent only
    /// to a terminal that announced it.
    pub fn is_ours(self) -> bool {
        (1900..2000).contains(&(self as u32))
    }
}

macro_rules! error_codes {
    ($($variant:ident = $code:literal => $zh:literal,)*) => {
        /// The `code` of the `{code, msg, data}` envelope (notes §6).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum ErrorCode { $($variant = $code,)* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn from_i64(code: i64) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)* _ => None }
            }

            /// The English key the original server sends as `msg`.
            pub fn key(self) -> &'static str {
                match self { $(Self::$variant => stringify!($variant),)* }
            }

            /// The Chinese text of the API document's code table.
            pub fn zh(self) -> &'static str {
                match self { $(Self::$variant => $zh,)* }
            }
        }
    };
}

error_codes! {
    Success = 0 => "成功",
    TerminalTokenError = 60000 => "终端请求TOKEN错误",
    TerminalLoginFail = 60001 => "终端登录失败",
    TerminalNotLogin = 60002 => "终端没有登录",
    TerminalTypeError = 60003 => "终端类型错误",
    TerminalIdError = 60004 => "终端序号错误",
    TerminalMacError = 60005 => "终端MAC错误",
    TerminalMaskError = 60006 => "终端子网掩码错误",
    TerminalGatewayError = 60007 => "终端网关错误",
    TerminalDns1Error = 60008 => "终端域名解析地址错误",
    TerminalNameError = 60009 => "终端名称错误",
    TerminalPlatformError = 60010 => "终端CPU架构名称错误",
    TerminalSoftVersionError = 60011 => "终端软件版本错误",
    TerminalModeTypeError = 60012 => "终端默认桌面模式类型错误",
    TerminalModeAutoDesktopError = 60013 => "终端模式自动登录设置错误",
    TerminalServerIpError = 60014 => "终端连接服务器IP错误",
    TerminalConfVersionError = 60015 => "终端配置版本号错误",
    TerminalRepeatLogin = 60016 => "终端重复登录错误",
    TerminalNotConnectError = 60017 => "终端未链接",
    TerminalOrderIdLittleStartId = 60018 => "终端确认排序号小于起始编号",
    TerminalOrderMacError = 60019 => "终端确认排序的MAC地址不在本次排序回话中",
    TerminalAlreadyOrdered = 60020 => "终端已经排完序号",
    TorrentFileNotExist = 60021 => "种子文件不存在",
    UserOrPasswordError = 60022 => "用户名或密码错误",
    BtResponseMsgError = 60023 => "BT响应报文错误",
    TerminalDesktopNotExist = 60024 => "桌面信息不存在",
    TerminalRecordNotExist = 60025 => "终端记录不存在",
    TerminalDesktopIpOrderError = 60026 => "桌面IP排序错误",
    TerminalAddBtTaskError = 60027 => "添加BT任务失败",
    TerminalTorrentUploadFail = 60028 => "种子上传失败",
    TerminalBtTaskNotExist = 60029 => "BT任务不存在",
    UploadDeviceNotExist = 60030 => "上传设备不存在",
    TerminalUpgradepagNotExist = 60031 => "升级包不存在",
    TorrentCreateFail = 60032 => "种子创建失败",
    TerminalBtUploadTaskNotExist = 60033 => "BT上传任务不存在",
    MessageError = 88888 => "报文错误，请修正重试",
    SystemError = 99999 => "系统异常，请稍后重试",
    OtherError = -1 => "未知异常",
}

impl ErrorCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_codes_round_trip() {
        for &c in ServiceCode::ALL {
            assert_eq!(ServiceCode::from_u32(c as u32), Some(c));
            assert_eq!(ServiceCode::from_name(c.name()), Some(c));
        }
        assert_eq!(
            ServiceCode::from_u32(9001),
            Some(ServiceCode::TerminalLogin)
        );
        assert_eq!(ServiceCode::UpdatePerformance as u32, 9029);
        assert_eq!(ServiceCode::UploadLog as u32, 9999);
        assert!(ServiceCode::from_u32(1027).is_none());
    }

    #[test]
    fn covers_every_table_row() {
        let cmds = ServiceCode::ALL.iter().filter(|c| c.is_command()).count();
        // 1000–1026 plus 1030, 1031, 1032, and our 1900 and 1901.
        assert_eq!(cmds, 32);
        let reqs = ServiceCode::ALL.len() - cmds;
        // 9000–9029 plus 9999.
        assert_eq!(reqs, 31);
    }

    #[test]
    fn error_codes_cover_table() {
        for code in 60000..=60033 {
            assert!(ErrorCode::from_i64(code).is_some(), "{code}");
        }
        assert_eq!(ErrorCode::from_i64(88888), Some(ErrorCode::MessageError));
        assert_eq!(ErrorCode::from_i64(99999), Some(ErrorCode::SystemError));
        assert_eq!(ErrorCode::from_i64(-1), Some(ErrorCode::OtherError));
        assert_eq!(ErrorCode::TerminalTokenError.key(), "TerminalTokenError");
    }
}
