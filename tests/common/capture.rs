//! What reaches a link: a raw packet socket (AF_PACKET) opened inside a
//! network namespace, on one interface, reading every IPv4/UDP frame for a
//! while. Nothing needs to listen on the port, as on a terminal that is
//! off, whose NIC still sees the frame. Needs root.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::libc;

/// One UDP datagram seen on the link.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

pub struct Capture {
    rx: mpsc::Receiver<Datagram>,
    pub seen: Vec<Datagram>,
}

fn udp_of(frame: &[u8]) -> Option<Datagram> {
    // Ethernet II, IPv4, UDP.
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    Some(Datagram {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..].to_vec(),
    })
}

impl Capture {
    /// Starts reading `iface` in namespace `ns` for `secs` seconds.
    pub fn start(ns: &str, iface: &str, secs: u64) -> Result<Capture, String> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (ns, iface) = (ns.to_string(), iface.to_string());
        std::thread::spawn(move || {
            let open = || -> Result<OwnedFd, String> {
                let nsf = std::fs::File::open(format!("/run/netns/{ns}"))
                    .map_err(|e| format!("netns {ns}: {e}"))?;
                // SAFETY: plain syscalls on descriptors this thread owns;
                // setns moves only this thread into the namespace.
                unsafe {
                    if libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(format!("setns: {}", std::io::Error::last_os_error()));
                    }
                    let proto = (libc::ETH_P_ALL as u16).to_be();
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
                    if fd < 0 {
                        return Err(format!("socket: {}", std::io::Error::last_os_error()));
                    }
                    let fd = OwnedFd::from_raw_fd(fd);
                    let name = std::ffi::CString::new(iface.clone()).map_err(|e| e.to_string())?;
                    let index = libc::if_nametoindex(name.as_ptr());
                    if index == 0 {
                        return Err(format!("no interface {iface} in {ns}"));
                    }
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_protocol = proto;
                    sll.sll_ifindex = index as i32;
                    if libc::bind(
                        fd.as_raw_fd(),
                        &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    ) != 0
                    {
                        return Err(format!("bind: {}", std::io::Error::last_os_error()));
                    }
                    let tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 200_000,
                    };
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        &tv as *const libc::timeval as *const libc::c_void,
                        std::mem::size_of::<libc::timeval>() as u32,
                    );
                    Ok(fd)
                }
            };
            let fd = match open() {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let end = Instant::now() + Duration::from_secs(secs);
            let mut buf = vec![0u8; 4096];
            while Instant::now() < end {
                // SAFETY: reads into a buffer of the length given.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n > 0 {
                    if let Some(d) = udp_of(&buf[..n as usize]) {
                        if tx.send(d).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("capture thread: {e}"))??;
        Ok(Capture {
            rx,
            seen: Vec::new(),
        })
    }

    /// Waits up to `secs` for a datagram matching `pred`; everything read
    /// is kept in `seen`.
    pub fn wait_for(&mut self, secs: u64, pred: impl Fn(&Datagram) -> bool) -> Option<Datagram> {
        if let Some(d) = self.seen.iter().find(|d| pred(d)) {
            return Some(d.clone());
        }
        let end = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(d) => {
                    self.seen.push(d.clone());
                    if pred(&d) {
                        return Some(d);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }
}
