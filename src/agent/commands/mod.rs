//! Server→terminal commands (1xxx). One file per command, each with `parse`
//! and `apply`; this file only dispatches, replies, and carries out what a
//! command asks for after its reply has gone out.
//!
//! Every reply uses the command's service code, `req_or_res = 2`, the echoed
//! sequence number, and `data {mac, batch_no}`.

mod add_data_disk;
mod bt_task_complete;
mod cancel_download_desktop;
mod cancel_p_to_v;
mod cancel_send_desktop;
mod clear_all_desktop;
mod context;
mod delete;
mod download_desktop;
mod enter_maintain;
mod enter_maintenance_mode;
mod order;
mod power_notice;
mod push_task_result;
mod pxe_start;
mod restart;
mod send_desktop;
mod send_torrent;
mod shutdown;
mod terminal_upgrade;
mod unsupported;
mod update_config;
mod update_desktop_group_info;
mod update_difference_disk;
mod update_ip;
mod update_name;
mod upload_disk;
mod wake_relay;
mod watermark_switch;

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::agent::session::connection::Link;
use crate::agent::session::end::SessionEnd;
use crate::agent::session::CommandHandler;
use crate::agent::state::CommandRecord;
use crate::agent::terminal::Agent;
use crate::protocol::messages::CommandReplyData;
use crate::protocol::{BatchNo, DataType, Envelope, ErrorCode, Frame, ServiceCode};

pub use context::{
    check_download_url, parse_json, After, Applied, CmdResult, CommandError, Ctx, POWER_DELAY,
};

/// The batch number, however much of the body is otherwise usable, so even
/// a refusal is matched to its request by the server.
fn batch_of(frame: &Frame) -> BatchNo {
    #[derive(serde::Deserialize)]
    struct B {
        batch_no: BatchNo,
    }
    frame.json::<B>().map(|b| b.batch_no).unwrap_or_default()
}

enum Command {
    Shutdown(shutdown::Shutdown),
    Restart(restart::Restart),
    Delete(delete::Delete),
    UpdateName(update_name::UpdateName),
    UpdateConfig(update_config::UpdateConfig),
    EnterMaintenanceMode(enter_maintenance_mode::EnterMaintenanceMode),
    EnterMaintain(enter_maintain::EnterMaintain),
    Order(order::Order),
    UpdateIp(update_ip::UpdateIp),
    PxeStart(pxe_start::PxeStart),
    WatermarkSwitch(watermark_switch::WatermarkSwitch),
    UpdateDesktopGroupInfo(update_desktop_group_info::UpdateDesktopGroupInfo),
    ClearAllDesktop(clear_all_desktop::ClearAllDesktop),
    AddDataDisk(add_data_disk::AddDataDisk),
    UpdateDifferenceDisk(update_difference_disk::UpdateDifferenceDisk),
    SendTorrent(send_torrent::SendTorrent),
    DownloadDesktop(download_desktop::DownloadDesktop),
    CancelDownloadDesktop(cancel_download_desktop::CancelDownloadDesktop),
    CancelSendDesktop(cancel_send_desktop::CancelSendDesktop),
    CancelPToV(cancel_p_to_v::CancelPToV),
    SendDesktop(send_desktop::SendDesktop),
    BtTaskComplete(bt_task_complete::BtTaskComplete),
    UploadDisk(upload_disk::UploadDisk),
    PushTaskResult(push_task_result::PushTaskResult),
    WakeRelay(wake_relay::WakeRelay),
    TerminalUpgrade(terminal_upgrade::TerminalUpgrade),
    PowerNotice(power_notice::PowerNotice),
    Unsupported(unsupported::Unsupported),
}

impl Command {
    fn from_frame(code: ServiceCode, frame: &Frame) -> Result<Command, CommandError> {
        use ServiceCode as S;
        Ok(match code {
            S::Shutdown => Command::Shutdown(shutdown::Shutdown::parse(frame)?),
            S::Restart => Command::Restart(restart::Restart::parse(frame)?),
            S::Delete => Command::Delete(delete::Delete::parse(frame)?),
            S::UpdateName => Command::UpdateName(update_name::UpdateName::parse(frame)?),
            S::UpdateConfig => Command::UpdateConfig(update_config::UpdateConfig::parse(frame)?),
            S::EnterMaintenanceMode => Command::EnterMaintenanceMode(
                enter_maintenance_mode::EnterMaintenanceMode::parse(frame)?,
            ),
            S::EnterMaintain => {
                Command::EnterMaintain(enter_maintain::EnterMaintain::parse(frame)?)
            }
            S::Order => Command::Order(order::Order::parse(frame)?),
            S::UpdateIp => Command::UpdateIp(update_ip::UpdateIp::parse(frame)?),
            S::PxeStart => Command::PxeStart(pxe_start::PxeStart::parse(frame)?),
            S::WatermarkSwitch => {
                Command::WatermarkSwitch(watermark_switch::WatermarkSwitch::parse(frame)?)
            }
            S::UpdateDesktopGroupInfo => Command::UpdateDesktopGroupInfo(
                update_desktop_group_info::UpdateDesktopGroupInfo::parse(frame)?,
            ),
            S::ClearAllDesktop => {
                Command::ClearAllDesktop(clear_all_desktop::ClearAllDesktop::parse(frame)?)
            }
            S::AddDataDisk => Command::AddDataDisk(add_data_disk::AddDataDisk::parse(frame)?),
            S::UpdateDifferenceDisk => Command::UpdateDifferenceDisk(
                update_difference_disk::UpdateDifferenceDisk::parse(frame)?,
            ),
            S::SendTorrent => Command::SendTorrent(send_torrent::SendTorrent::parse(frame)?),
            S::DownloadDesktop => {
                Command::DownloadDesktop(download_desktop::DownloadDesktop::parse(frame)?)
            }
            S::CancelDownloadDesktop => Command::CancelDownloadDesktop(
                cancel_download_desktop::CancelDownloadDesktop::parse(frame)?,
            ),
            S::CancelSendDesktop => {
                Command::CancelSendDesktop(cancel_send_desktop::CancelSendDesktop::parse(frame)?)
            }
            S::SendDesktop => Command::SendDesktop(send_desktop::SendDesktop::parse(frame)?),
            S::CancelPToV => Command::CancelPToV(cancel_p_to_v::CancelPToV::parse(frame)?),
            S::BtTaskComplete => {
                Command::BtTaskComplete(bt_task_complete::BtTaskComplete::parse(frame)?)
            }
            // 1016 upload_desktop carries the same `desktop` (with its
            // disks) as 1020: the same upload path, 9018, 9014, 1021.
            S::UploadDisk | S::UploadDesktop => {
                Command::UploadDisk(upload_disk::UploadDisk::parse(frame)?)
            }
            S::PushTaskResult => {
                Command::PushTaskResult(push_task_result::PushTaskResult::parse(frame)?)
            }
            S::WakeRelay => Command::WakeRelay(wake_relay::WakeRelay::parse(frame)?),
            S::TerminalUpgrade => {
                Command::TerminalUpgrade(terminal_upgrade::TerminalUpgrade::parse(frame)?)
            }
            S::PowerNotice => Command::PowerNotice(power_notice::PowerNotice::parse(frame)?),
            other => Command::Unsupported(unsupported::Unsupported::parse(other, frame)),
        })
    }

    async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        match self {
            Command::Shutdown(c) => c.apply(ctx).await,
            Command::Restart(c) => c.apply(ctx).await,
            Command::Delete(c) => c.apply(ctx).await,
            Command::UpdateName(c) => c.apply(ctx).await,
            Command::UpdateConfig(c) => c.apply(ctx).await,
            Command::EnterMaintenanceMode(c) => c.apply(ctx).await,
            Command::EnterMaintain(c) => c.apply(ctx).await,
            Command::Order(c) => c.apply(ctx).await,
            Command::UpdateIp(c) => c.apply(ctx).await,
            Command::PxeStart(c) => c.apply(ctx).await,
            Command::WatermarkSwitch(c) => c.apply(ctx).await,
            Command::UpdateDesktopGroupInfo(c) => c.apply(ctx).await,
            Command::ClearAllDesktop(c) => c.apply(ctx).await,
            Command::AddDataDisk(c) => c.apply(ctx).await,
            Command::UpdateDifferenceDisk(c) => c.apply(ctx).await,
            Command::SendTorrent(c) => c.apply(ctx).await,
            Command::DownloadDesktop(c) => c.apply(ctx).await,
            Command::CancelDownloadDesktop(c) => c.apply(ctx).await,
            Command::CancelSendDesktop(c) => c.apply(ctx).await,
            Command::CancelPToV(c) => c.apply(ctx).await,
            Command::SendDesktop(c) => c.apply(ctx).await,
            Command::BtTaskComplete(c) => c.apply(ctx).await,
            Command::UploadDisk(c) => c.apply(ctx).await,
            Command::PushTaskResult(c) => c.apply(ctx).await,
            Command::WakeRelay(c) => c.apply(ctx).await,
            Command::TerminalUpgrade(c) => c.apply(ctx).await,
            Command::PowerNotice(c) => c.apply(ctx).await,
            Command::Unsupported(c) => c.apply(ctx).await,
        }
    }
}

/// Parses a command frame the way `handle` does, without applying it: what
/// the agent would refuse, and with which error. The fuzzers drive every
/// command's parser through this.
pub fn validate(frame: &Frame) -> Result<ServiceCode, CommandError> {
    let code = frame
        .service()
        .ok_or_else(|| CommandError::message("unknown service code"))?;
    Command::from_frame(code, frame)?;
    Ok(code)
}

/// Handles one command frame: returns the reply and what to do after it.
pub async fn handle(agent: &Arc<Agent>, link: &Link, frame: &Frame) -> (Frame, After) {
    let Some(code) = frame.service() else {
        // The reader only routes known 1xxx codes here.
        let env =
            Envelope::<CommandReplyData>::error(ErrorCode::MessageError, "unknown service code");
        return (reply_frame(link, frame, env), After::Nothing);
    };
    let batch_no = if code == ServiceCode::SendTorrent && send_torrent::carries_struct(frame) {
        // The 1015 struct carries its batch as the task uuid.
        send_torrent::SendTorrent::batch_no(frame).unwrap_or_default()
    } else {
        batch_of(frame)
    };
    let body_md5 = crate::protocol::md5_hex(&frame.payload);

    // The server sends every command with this session's token (notes
    // §1.4) and, when it names a terminal, this terminal's mac. Anything
    // else is not for us and must not be applied.
    if let Some(e) = foreign(agent, link, frame) {
        log::warn!("{} batch {batch_no} refused: {}", code.name(), e.msg);
        let env = Envelope::error(e.code, e.msg).with_data(CommandReplyData {
            mac: agent.mac.clone(),
            batch_no,
            extra: BTreeMap::new(),
        });
        return (reply_frame(link, frame, env), After::Nothing);
    }

    // A batch we already answered (the server re-sent it after a reconnect)
    // is answered again with the same result and not applied twice.
    let prev = agent
        .state
        .read(|s| s.handled(frame.service_code, &batch_no, &body_md5).cloned());
    if let Some(mut prev) = prev {
        if prev.pending && code.is_power() {
            // The agent died while applying a power or boot command: that
            // death was the command's effect (its boot target, if any, is
            // already set). Doing it again would be doing it twice.
            log::warn!(
                "{} batch {batch_no} was in progress when the agent stopped; counted as done",
                code.name()
            );
            prev.pending = false;
            prev.code = 0;
            prev.msg = ErrorCode::Success.key().into();
            let done = prev.clone();
            agent.persist(|s| s.record_command(done));
        }
        if !prev.pending {
            log::info!(
                "{} batch {batch_no} was already handled; repeating its answer",
                code.name()
            );
            let env = Envelope {
                code: prev.code,
                msg: prev.msg,
                en_msg: None,
                data: Some(CommandReplyData {
                    mac: agent.mac.clone(),
                    batch_no,
                    extra: BTreeMap::new(),
                }),
            };
            return (reply_frame(link, frame, env), After::Nothing);
        }
        // Every other command sets absolute values, so finishing an
        // interrupted one is applying it again.
        log::warn!(
            "{} batch {batch_no} was interrupted by a restart; applying it again",
            code.name()
        );
    }
    let intent = CommandRecord {
        service_code: frame.service_code,
        name: code.name().into(),
        batch_no: batch_no.clone(),
        body_md5: body_md5.clone(),
        code: ErrorCode::SystemError.code().into(),
        msg: "interrupted".into(),
        at: chrono::Local::now().to_rfc3339(),
        pending: true,
    };
    agent.persist(|s| s.record_command(intent));

    let ctx = Ctx { agent, link };
    let result = match Command::from_frame(code, frame) {
        Ok(cmd) => cmd.apply(&ctx).await,
        Err(e) => Err(e),
    };
    let (env, after) = match result {
        Ok(applied) => {
            let mut env = Envelope::ok(CommandReplyData {
                mac: agent.mac.clone(),
                batch_no: applied.batch_no.unwrap_or_else(|| batch_no.clone()),
                extra: applied.extra,
            });
            env.msg = ErrorCode::Success.key().into();
            (env, applied.after.unwrap_or(After::Nothing))
        }
        Err(e) => {
            log::warn!(
                "{} batch {batch_no}: {} {}",
                code.name(),
                e.code.code(),
                e.msg
            );
            let env = Envelope::error(e.code, e.msg).with_data(CommandReplyData {
                mac: agent.mac.clone(),
                batch_no: batch_no.clone(),
                extra: BTreeMap::new(),
            });
            (env, After::Nothing)
        }
    };
    let record = CommandRecord {
        service_code: frame.service_code,
        name: code.name().into(),
        batch_no,
        body_md5,
        code: env.code,
        msg: env.msg.clone(),
        at: chrono::Local::now().to_rfc3339(),
        pending: false,
    };
    agent.persist(|s| s.record_command(record));
    (reply_frame(link, frame, env), after)
}

/// Why a command is not meant for this terminal's session, if it is not.
fn foreign(agent: &Agent, link: &Link, frame: &Frame) -> Option<CommandError> {
    let token = link.token();
    if !token.is_empty() && frame.token != token {
        return Some(CommandError::new(
            ErrorCode::TerminalTokenError,
            "the command carries another session's token",
        ));
    }
    if frame.data_type == DataType::Json as u8 {
        #[derive(serde::Deserialize)]
        struct M {
            mac: Option<serde_json::Value>,
        }
        if let Ok(M { mac: Some(m) }) = frame.json::<M>() {
            let ours = m.as_str() == Some("")
                || m.as_str()
                    .and_then(crate::protocol::normalize_mac)
                    .is_some_and(|m| m == agent.mac);
            if !ours {
                return Some(CommandError::new(
                    ErrorCode::TerminalMacError,
                    format!("the command names mac {m}, not this terminal"),
                ));
            }
        }
    }
    None
}

fn reply_frame(link: &Link, req: &Frame, env: Envelope<CommandReplyData>) -> Frame {
    Frame::response_json(req, link.client_type(), &link.token(), &env).unwrap_or_else(|_| Frame {
        service_code: req.service_code,
        sequence_code: req.sequence_code,
        data_type: DataType::Json as u8,
        client_type: link.client_type() as u8,
        req_or_res: 2,
        token: link.token(),
        payload: bytes::Bytes::from_static(br#"{"code":99999,"msg":"SystemError"}"#),
    })
}

/// The agent's command handler: what the session hands every 1xxx frame to.
pub struct Dispatcher {
    agent: Arc<Agent>,
}

impl Dispatcher {
    pub fn new(agent: Arc<Agent>) -> Arc<Dispatcher> {
        Arc::new(Dispatcher { agent })
    }
}

impl CommandHandler for Dispatcher {
    fn serve(
        &self,
        link: Link,
        frames: mpsc::Receiver<Frame>,
        end: mpsc::Sender<SessionEnd>,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(worker(self.agent.clone(), link, frames, end))
    }
}

/// Applies commands in order for one session.
async fn worker(
    agent: Arc<Agent>,
    link: Link,
    mut rx: mpsc::Receiver<Frame>,
    end_tx: mpsc::Sender<SessionEnd>,
) {
    while let Some(frame) = rx.recv().await {
        let guard = agent.command_lock.lock().await;
        let (reply, after) = handle(&agent, &link, &frame).await;
        drop(guard);
        if !link.send(reply).await {
            log::warn!(
                "reply to {} was not sent: connection closed",
                frame.service_code
            );
        }
        match after {
            After::Nothing => {}
            After::PowerOff | After::Reboot => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(POWER_DELAY).await;
                    let r = crate::agent::power::power_down(&agent, after == After::PowerOff).await;
                    if let Err(e) = r {
                        log::error!("{after:?}: {e}");
                        agent.persist(|s| s.notice(format!("{after:?} failed: {e}")));
                    }
                });
            }
            After::Reconnect(why) => {
                let _ = end_tx.send(SessionEnd::Reconnect(why)).await;
            }
            After::RefreshDesktops => {
                update_desktop_group_info::refresh(&agent, &link).await;
            }
            After::ChangeNetwork {
                net,
                conf_version,
                mask,
            } => match agent.change_network(net, conf_version, mask).await {
                Ok(()) => {
                    let _ = end_tx
                        .send(SessionEnd::Reconnect("address changed".into()))
                        .await;
                }
                Err(e) => log::error!("update_ip: {e}"),
            },
            After::MoveServer(ip) => {
                agent.move_server(ip.clone(), None);
                let _ = end_tx
                    .send(SessionEnd::Reconnect(format!("server moved to {ip}")))
                    .await;
            }
        }
    }
}
