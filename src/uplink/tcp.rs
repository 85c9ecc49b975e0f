//! The uplink's TCP connection as the kernel sees it. rtspclientsink does not hand out its
//! socket, but it is this process's own: it is found among our file descriptors by the port of
//! the media server it is connected to, and read with `TCP_INFO` and `SIOCOUTQ` — the figures
//! a congested link shows first (bytes waiting to be sent or acknowledged, round-trip time),
//! long before RTCP could tell (MediaMTX sends no receiver reports to a TCP publisher).

use std::collections::BTreeSet;
use std::os::fd::RawFd;

use nix::libc;

/// What the kernel says about one TCP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// Bytes written but not yet acknowledged by the peer (sent or not).
    pub outq_bytes: u32,
    /// Of those, bytes not sent yet (the congestion window is full): waiting, not in flight.
    pub notsent_bytes: u32,
    /// Bytes the peer has acknowledged since the connection opened.
    pub acked_bytes: u64,
}

/// `struct tcp_info` from linux/tcp.h up to `tcpi_min_rtt` (Linux 4.6). The kernel fills what
/// it has and says how much: older kernels leave the tail at zero.
#[repr(C)]
#[derive(Default)]
struct TcpInfo {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    wscale: u8,
    app_limited: u8,
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
}

const TCP_ESTABLISHED: u8 = 1;

/// Reads `fd`'s connection; None when it is not an established TCP socket any more.
pub fn sample(fd: RawFd) -> Option<Sample> {
    let mut info = TcpInfo::default();
    let mut len = std::mem::size_of::<TcpInfo>() as libc::socklen_t;
    // SAFETY: `info` is a plain C struct of `len` bytes the kernel writes at most `len` of.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut TcpInfo).cast(),
            &mut len,
        )
    };
    if r != 0 || info.state != TCP_ESTABLISHED {
        return None;
    }
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) };
    if r != 0 {
        return None;
    }
    Some(Sample {
        rtt_us: info.rtt,
        outq_bytes: outq.max(0) as u32,
        notsent_bytes: info.notsent_bytes,
        acked_bytes: info.bytes_acked,
    })
}

/// Caps the kernel's send buffer: by default it grows to megabytes, seconds of video on a
/// narrow link that could never be taken back. With a small one a narrowing link fills it at
/// once and the uplink's own queue — bounded in time, dropping whole GOPs — holds the rest.
pub fn cap_send_buffer(fd: RawFd, bytes: u32) -> bool {
    let v = bytes as libc::c_int;
    // SAFETY: SO_SNDBUF takes one int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// The peer port of socket `fd`, if it is a connected IP socket.
fn peer_port(fd: RawFd) -> Option<u16> {
    // SAFETY: sockaddr_storage is large enough for any address; the kernel writes at most len.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(&addr as *const _ as *const libc::sockaddr_in) };
            Some(u16::from_be(a.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(&addr as *const _ as *const libc::sockaddr_in6) };
            Some(u16::from_be(a.sin6_port))
        }
        _ => None,
    }
}

/// Our sockets connected to `port`: (inode, fd). The inode tells connections apart when a
/// descriptor number is reused.
pub fn connected_to(port: u16) -> Vec<(u64, RawFd)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok())
        else {
            continue;
        };
        if peer_port(fd) == Some(port) {
            out.push((inode, fd));
        }
    }
    out
}

/// The newest connection to `port` that is not one of `before` (sockets that existed when the
/// uplink attached: other pushes, such as playback sessions, to the same server).
pub fn find_new(port: u16, before: &BTreeSet<u64>) -> Option<(u64, RawFd)> {
    connected_to(port)
        .into_iter()
        .filter(|(inode, _)| !before.contains(inode))
        .max_by_key(|(inode, _)| *inode)
}

/// The port of an rtsp:// or rtsps:// URL (554 and 322 by default).
pub fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    let port = match authority.strip_prefix('[') {
        // [v6 address]:port
        Some(v6) => v6.split_once(']')?.1.strip_prefix(':'),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    };
    let port = port.and_then(|p| p.parse().ok());
    port.or(match scheme {
        "rtsp" => Some(554),
        "rtsps" => Some(322),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn ports_of_urls() {
        assert_eq!(url_port("rtsp://127.0.0.1:8554/channel/{path}"), Some(8554));
        assert_eq!(url_port("rtsps://media.example:8322/x"), Some(8322));
        assert_eq!(url_port("rtsp://media.example/x"), Some(554));
        assert_eq!(url_port("rtsps://u:p@media.example/x"), Some(322));
        assert_eq!(url_port("rtsp://[::1]:9000/x"), Some(9000));
        assert_eq!(url_port("rtsp://[::1]/x"), Some(554));
    }

    /// A real connection on loopback: found by its peer's port, and its unread bytes show as
    /// outstanding until the peer reads and the kernel acknowledges them.
    #[test]
    fn a_connection_is_found_and_its_queue_read() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let before: BTreeSet<u64> = connected_to(port).into_iter().map(|(i, _)| i).collect();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut peer, _) = server.accept().unwrap();
        let (_, fd) = find_new(port, &before).expect("the new connection");
        assert_eq!(fd, client.as_raw_fd());
        let s0 = sample(fd).expect("established");
        assert_eq!(s0.outq_bytes, 0);
        client.write_all(&[7u8; 1000]).unwrap();
        let mut got = [0u8; 1000];
        peer.read_exact(&mut got).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let s1 = sample(fd).expect("established");
        assert_eq!(s1.outq_bytes, 0, "{s1:?}");
        assert!(s1.acked_bytes >= 1000, "{s1:?}");
        assert!(cap_send_buffer(fd, 64 * 1024));
    }
}
