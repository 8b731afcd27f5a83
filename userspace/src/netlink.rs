//! Minimal rtnetlink client: lists the links of the current network namespace
//! with their XDP attachments (the `IFLA_XDP` nest of `RTM_GETLINK`).
use std::{io, mem::size_of};

use thiserror::Error;

/// Errors of the netlink client.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// A socket call failed.
    #[error("netlink {call} failed: {source}")]
    Io {
        /// The failing call.
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered with an error message.
    #[error("netlink request refused: {0}")]
    Kernel(io::Error),
    /// The answer could not be parsed.
    #[error("malformed netlink answer: {0}")]
    Malformed(&'static str),
}

/// The mode an XDP program is attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Skb,
    /// Hardware offload.
    Hw,
}

impl XdpMode {
    /// The name used on the command line (`--mode`).
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Hw => "hw",
        }
    }
}

/// One XDP program attached to a link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct XdpAttachment {
    /// Attachment mode.
    pub mode: XdpMode,
    /// Kernel program id.
    pub prog_id: u32,
}

/// A link of the current namespace and its XDP attachments (empty if none).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// Attached XDP programs, one per mode at most.
    pub xdp: Vec<XdpAttachment>,
}

const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR: usize = size_of::<libc::nlmsghdr>();
const IFINFOMSG: usize = 16;

/// Lists every link of the current network namespace with its XDP programs.
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    let sock = Socket::open()?;
    #[repr(C)]
    struct Request {
        hdr: libc::nlmsghdr,
        ifi: [u8; IFINFOMSG],
    }
    let req = Request {
        hdr: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: libc::RTM_GETLINK,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        ifi: [0; IFINFOMSG], // family AF_UNSPEC, all links
    };
    // SAFETY: Request is plain old data.
    let bytes = unsafe {
        std::slice::from_raw_parts(&req as *const Request as *const u8, size_of::<Request>())
    };
    sock.send(bytes)?;

    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut buf)?;
        let mut off = 0;
        while off + NLMSG_HDR <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < NLMSG_HDR || off + len > n {
                return Err(NetlinkError::Malformed("message length"));
            }
            let body = &buf[off + NLMSG_HDR..off + len];
            match ty as i32 {
                libc::NLMSG_DONE => return Ok(links),
                libc::NLMSG_ERROR => {
                    let errno = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .ok_or(NetlinkError::Malformed("error message"))?;
                    if errno != 0 {
                        return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(-errno)));
                    }
                }
                t if t == libc::RTM_NEWLINK as i32 => links.push(parse_link(body)?),
                _ => {}
            }
            off += align(len);
        }
    }
}

fn parse_link(body: &[u8]) -> Result<Link, NetlinkError> {
    let ifi = body
        .get(..IFINFOMSG)
        .ok_or(NetlinkError::Malformed("ifinfomsg"))?;
    let ifindex = i32::from_ne_bytes(ifi[4..8].try_into().unwrap()) as u32;
    let mut link = Link {
        ifindex,
        name: String::new(),
        xdp: Vec::new(),
    };
    for (ty, payload) in Attrs(&body[IFINFOMSG..]) {
        match ty {
            IFLA_IFNAME => {
                let end = payload
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(payload.len());
                link.name = String::from_utf8_lossy(&payload[..end]).into_owned();
            }
            IFLA_XDP => link.xdp = parse_xdp(payload),
            _ => {}
        }
    }
    Ok(link)
}

fn parse_xdp(nest: &[u8]) -> Vec<XdpAttachment> {
    let mut attached = 0u8;
    let (mut prog, mut drv, mut skb, mut hw) = (0u32, 0u32, 0u32, 0u32);
    for (ty, p) in Attrs(nest) {
        let u32_of = |p: &[u8]| {
            p.get(..4)
                .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()))
        };
        match ty {
            IFLA_XDP_ATTACHED => attached = p.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => prog = u32_of(p),
            IFLA_XDP_DRV_PROG_ID => drv = u32_of(p),
            IFLA_XDP_SKB_PROG_ID => skb = u32_of(p),
            IFLA_XDP_HW_PROG_ID => hw = u32_of(p),
            _ => {}
        }
    }
    // With a single attachment the kernel reports only IFLA_XDP_PROG_ID and the
    // mode in IFLA_XDP_ATTACHED; with several (XDP_ATTACHED_MULTI) one id per mode.
    match attached {
        XDP_ATTACHED_DRV => drv = drv.max(prog),
        XDP_ATTACHED_SKB => skb = skb.max(prog),
        XDP_ATTACHED_HW => hw = hw.max(prog),
        _ => {}
    }
    [
        (XdpMode::Native, drv),
        (XdpMode::Skb, skb),
        (XdpMode::Hw, hw),
    ]
    .into_iter()
    .filter(|(_, id)| *id != 0)
    .map(|(mode, prog_id)| XdpAttachment { mode, prog_id })
    .collect()
}

const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Iterator over netlink attributes: `(type, payload)`.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        let payload = &b[4..len];
        self.0 = &b[align(len).min(b.len())..];
        Some((ty, payload))
    }
}

/// An `AF_NETLINK`/`NETLINK_ROUTE` socket, closed on drop.
struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn open() -> Result<Self, NetlinkError> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Io {
                call: "socket",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Socket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl addresses the kernel.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::Io {
                call: "sendto",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, NetlinkError> {
        use std::os::fd::AsRawFd as _;
        loop {
            // SAFETY: buf is valid for writes of its length.
            let rc =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkError::Io {
                    call: "recv",
                    source: err,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn single_attachment_takes_mode_from_attached() {
        let mut nest = attr(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]);
        nest.extend(attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()));
        assert_eq!(
            parse_xdp(&nest),
            vec![XdpAttachment {
                mode: XdpMode::Skb,
                prog_id: 77
            }]
        );
    }

    #[test]
    fn multi_attachment_lists_each_mode() {
        let mut nest = attr(IFLA_XDP_ATTACHED, &[4]);
        nest.extend(attr(IFLA_XDP_DRV_PROG_ID, &5u32.to_ne_bytes()));
        nest.extend(attr(IFLA_XDP_SKB_PROG_ID, &6u32.to_ne_bytes()));
        let got = parse_xdp(&nest);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].mode, XdpMode::Native);
        assert_eq!(got[1].prog_id, 6);
    }

    #[test]
    fn truncated_attribute_stops_iteration() {
        let mut bytes = attr(IFLA_IFNAME, b"eth0\0");
        bytes.extend_from_slice(&[200, 0, 3, 0]); // claims 200 bytes
        let all: Vec<_> = Attrs(&bytes).collect();
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn lists_loopback_of_current_namespace() {
        let links = links().expect("RTM_GETLINK dump");
        assert!(links.iter().any(|l| l.name == "lo" && l.ifindex == 1));
    }
}
