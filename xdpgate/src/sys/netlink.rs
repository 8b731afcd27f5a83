//! Minimal rtnetlink client: lists the links of the current network namespace
//! with their XDP attachments (the `IFLA_XDP` nest of `RTM_GETLINK`), and
//! lists, adds and deletes interface addresses of both families
//! (`RTM_GETADDR`, `RTM_NEWADDR`, `RTM_DELADDR`).
use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use thiserror::Error;
use xdpgate_model::iface::XdpMode;

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
    /// The kernel refused to add or delete an address.
    #[error("cannot {op} address {addr}/{plen} {on} {iface}: {source}{hint}",
        op = .op.verb(), on = .op.preposition(), hint = addr_hint(*.op, .source))]
    Address {
        /// Add or delete.
        op: AddrOpKind,
        /// The address.
        addr: IpAddr,
        /// Its prefix length.
        plen: u8,
        /// Interface name (or `ifindex N`).
        iface: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// What an address request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrOpKind {
    /// `RTM_NEWADDR` (create, exclusive).
    Add,
    /// `RTM_DELADDR`.
    Delete,
}

impl AddrOpKind {
    fn verb(self) -> &'static str {
        match self {
            AddrOpKind::Add => "add",
            AddrOpKind::Delete => "delete",
        }
    }
    fn preposition(self) -> &'static str {
        match self {
            AddrOpKind::Add => "to",
            AddrOpKind::Delete => "from",
        }
    }
}

/// What the common errors of address requests mean.
fn addr_hint(op: AddrOpKind, e: &io::Error) -> &'static str {
    match (op, e.raw_os_error()) {
        (AddrOpKind::Add, Some(libc::EEXIST)) => " (the address is already on the interface)",
        (AddrOpKind::Add, Some(libc::EACCES)) => " (IPv6 may be disabled on the interface)",
        (AddrOpKind::Add, Some(libc::EADDRNOTAVAIL)) => {
            " (the kernel does not accept this address on this interface)"
        }
        (AddrOpKind::Delete, Some(libc::EADDRNOTAVAIL)) => " (the address is not on the interface)",
        (_, Some(libc::ENODEV)) => " (no such interface)",
        (_, Some(libc::EPERM)) => " (needs CAP_NET_ADMIN)",
        _ => "",
    }
}

/// An address of an interface, as `RTM_GETADDR` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IfAddr {
    /// Interface index.
    pub ifindex: u32,
    /// The local address.
    pub addr: IpAddr,
    /// Prefix length.
    pub plen: u8,
    /// `IFA_F_*` flags.
    pub flags: u32,
}

/// One address to add to or delete from an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrReq {
    /// Interface index.
    pub ifindex: u32,
    /// The address.
    pub addr: IpAddr,
    /// Prefix length (at most 32 or 128).
    pub plen: u8,
    /// IPv6: `IFA_F_NODAD` (no duplicate address detection). Ignored for IPv4.
    pub nodad: bool,
}

/// `IFA_F_NODAD`.
pub const IFA_F_NODAD: u32 = 0x02;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFADDRMSG: usize = 8;
/// Requests sent in one `sendto` before their acknowledgements are read.
const BATCH: usize = 64;

/// Lists the addresses of both families in the current namespace, of
/// interface `ifindex` only when given.
pub fn addresses(ifindex: Option<u32>) -> Result<Vec<IfAddr>, NetlinkError> {
    let sock = Socket::open()?;
    let mut req = Vec::with_capacity(NLMSG_HDR + IFADDRMSG);
    push_hdr(
        &mut req,
        libc::RTM_GETADDR,
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        1,
    );
    req.extend_from_slice(&[0u8; IFADDRMSG]); // AF_UNSPEC: both families
    finish(&mut req);
    sock.send(&req)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut buf)?;
        for msg in Messages(&buf[..n]) {
            let (ty, _seq, body) = msg?;
            match ty as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let errno = ack_errno(body)?;
                    if errno != 0 {
                        return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(errno)));
                    }
                }
                t if t == libc::RTM_NEWADDR as i32 => {
                    if let Some(a) = parse_addr(body)?
                        && ifindex.is_none_or(|i| i == a.ifindex)
                    {
                        out.push(a);
                    }
                }
                _ => {}
            }
        }
    }
}

fn parse_addr(body: &[u8]) -> Result<Option<IfAddr>, NetlinkError> {
    let ifa = body
        .get(..IFADDRMSG)
        .ok_or(NetlinkError::Malformed("ifaddrmsg"))?;
    let family = ifa[0] as i32;
    let plen = ifa[1];
    let mut flags = ifa[2] as u32;
    let ifindex = u32::from_ne_bytes(ifa[4..8].try_into().unwrap());
    let (mut local, mut address) = (None, None);
    for (ty, p) in Attrs(&body[IFADDRMSG..]) {
        let ip = match (family, p.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(p).unwrap()))),
            (libc::AF_INET6, 16) => {
                Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(p).unwrap())))
            }
            _ => None,
        };
        match ty {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            IFA_FLAGS if p.len() >= 4 => flags = u32::from_ne_bytes(p[..4].try_into().unwrap()),
            _ => {}
        }
    }
    // IFA_LOCAL is the local address when both are present (IFA_ADDRESS is
    // then the peer of a point-to-point link).
    Ok(local.or(address).map(|addr| IfAddr {
        ifindex,
        addr,
        plen,
        flags,
    }))
}

/// `NDA_DST`.
const NDA_DST: u16 = 1;
/// `NDA_FLAGS_EXT` (Linux 5.16+).
const NDA_FLAGS_EXT: u16 = 15;
/// `NTF_EXT_MANAGED`: the kernel keeps the entry resolved by itself.
const NTF_EXT_MANAGED: u32 = 1 << 0;

/// Asks the kernel to keep a neighbour entry for `addr` on `ifindex`
/// resolved (`ip neigh replace ADDR dev IF managed`): the kernel resolves it
/// now and re-resolves it whenever it goes stale, so XDP route lookups
/// (`bpf_fib_lookup`) find its link-layer address. An existing entry keeps its
/// address and becomes managed.
pub fn neigh_managed(ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
    let sock = Socket::open()?;
    let mut req = Vec::with_capacity(64);
    push_hdr(
        &mut req,
        libc::RTM_NEWNEIGH,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16,
        1,
    );
    // struct ndmsg: family, pad x3, ifindex, state (u16), flags, type.
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    req.extend_from_slice(&[family as u8, 0, 0, 0]);
    req.extend_from_slice(&ifindex.to_ne_bytes());
    req.extend_from_slice(&0u16.to_ne_bytes()); // NUD_NONE: resolve it
    req.extend_from_slice(&[0, 0]);
    match addr {
        IpAddr::V4(a) => push_attr(&mut req, NDA_DST, &a.octets()),
        IpAddr::V6(a) => push_attr(&mut req, NDA_DST, &a.octets()),
    }
    push_attr(&mut req, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
    finish(&mut req);
    sock.send(&req)?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf)?;
    for msg in Messages(&buf[..n]) {
        let (ty, _seq, body) = msg?;
        if ty as i32 == libc::NLMSG_ERROR {
            let errno = ack_errno(body)?;
            if errno != 0 {
                return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(errno)));
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Adds (`RTM_NEWADDR`, create-exclusive) or deletes (`RTM_DELADDR`) every
/// address of `reqs`, in order, several per system call. Returns one outcome
/// per request; a failed request does not stop the others. `Err` carries
/// the kernel's error, or (without an OS error number) a socket failure
/// after which the request's fate is unknown.
pub fn address_batch(op: AddrOpKind, reqs: &[AddrReq]) -> Vec<Result<(), io::Error>> {
    let mut out: Vec<Option<Result<(), io::Error>>> = Vec::with_capacity(reqs.len());
    out.resize_with(reqs.len(), || None);
    let sock = match Socket::open() {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            return reqs
                .iter()
                .map(|_| Err(io::Error::other(msg.clone())))
                .collect();
        }
    };
    sock.grow_rcvbuf();
    let mut buf = vec![0u8; 64 * 1024];
    for (c, chunk) in reqs.chunks(BATCH).enumerate() {
        let base = c * BATCH;
        let mut msg = Vec::with_capacity(chunk.len() * 64);
        for (i, r) in chunk.iter().enumerate() {
            encode_addr(&mut msg, op, r, (base + i + 1) as u32);
        }
        let failed = sock.send(&msg).err().or_else(|| {
            let mut pending = chunk.len();
            while pending > 0 {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) => return Some(e),
                };
                for m in Messages(&buf[..n]) {
                    let Ok((ty, seq, body)) = m else {
                        return Some(NetlinkError::Malformed("message length"));
                    };
                    let i = (seq as usize).wrapping_sub(1);
                    if ty as i32 != libc::NLMSG_ERROR || i < base || i >= base + chunk.len() {
                        continue;
                    }
                    let r = match ack_errno(body) {
                        Ok(0) => Ok(()),
                        Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
                        Err(e) => Err(io::Error::other(e.to_string())),
                    };
                    if out[i].is_none() {
                        pending -= 1;
                    }
                    out[i] = Some(r);
                }
            }
            None
        });
        if let Some(e) = failed {
            let msg = e.to_string();
            for o in &mut out[base..] {
                if o.is_none() {
                    *o = Some(Err(io::Error::other(format!(
                        "no answer from the kernel: {msg}"
                    ))));
                }
            }
            break;
        }
    }
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err(io::Error::other("not sent"))))
        .collect()
}

/// The error of a failed [`address_batch`] outcome, naming the address and
/// the interface.
pub fn address_error(op: AddrOpKind, req: &AddrReq, source: io::Error) -> NetlinkError {
    NetlinkError::Address {
        op,
        addr: req.addr,
        plen: req.plen,
        iface: crate::sys::ifname(req.ifindex)
            .unwrap_or_else(|| format!("ifindex {}", req.ifindex)),
        source,
    }
}

fn encode_addr(buf: &mut Vec<u8>, op: AddrOpKind, r: &AddrReq, seq: u32) {
    let start = buf.len();
    let (ty, flags) = match op {
        AddrOpKind::Add => (
            libc::RTM_NEWADDR,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL,
        ),
        AddrOpKind::Delete => (libc::RTM_DELADDR, libc::NLM_F_REQUEST | libc::NLM_F_ACK),
    };
    push_hdr(buf, ty, flags as u16, seq);
    let (family, bytes): (u8, Vec<u8>) = match r.addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let ifa_flags = if r.nodad && r.addr.is_ipv6() {
        IFA_F_NODAD
    } else {
        0
    };
    buf.push(family);
    buf.push(r.plen);
    buf.push(ifa_flags as u8);
    buf.push(0); // RT_SCOPE_UNIVERSE
    buf.extend_from_slice(&r.ifindex.to_ne_bytes());
    push_attr(buf, IFA_LOCAL, &bytes);
    push_attr(buf, IFA_ADDRESS, &bytes);
    if op == AddrOpKind::Add && ifa_flags != 0 {
        push_attr(buf, IFA_FLAGS, &ifa_flags.to_ne_bytes());
    }
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn push_hdr(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by the caller
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
}

/// Sets the length of a single message that fills `buf`.
fn finish(buf: &mut [u8]) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The (positive) error number of an `NLMSG_ERROR` body; 0 for an ack.
fn ack_errno(body: &[u8]) -> Result<i32, NetlinkError> {
    body.get(..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(NetlinkError::Malformed("error message"))
}

/// Iterator over the messages of one datagram: `(type, seq, body)`.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(u16, u32, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < NLMSG_HDR {
            return None;
        }
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
        if len < NLMSG_HDR || len > b.len() {
            self.0 = &[];
            return Some(Err(NetlinkError::Malformed("message length")));
        }
        self.0 = &b[align(len).min(b.len())..];
        Some(Ok((ty, seq, &b[NLMSG_HDR..len])))
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
    let bytes =
        unsafe { std::slice::from_raw_parts((&raw const req).cast::<u8>(), size_of::<Request>()) };
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

    /// Asks for a 1 MiB receive buffer (capped by `net.core.rmem_max`), room
    /// for the acknowledgements of a batch.
    fn grow_rcvbuf(&self) {
        use std::os::fd::AsRawFd as _;
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a valid int option value.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as u32,
            );
        }
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
                (&raw const addr).cast::<libc::sockaddr>(),
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
    fn address_request_layout() {
        let mut buf = Vec::new();
        let r = AddrReq {
            ifindex: 7,
            addr: "fd00:200::5".parse().unwrap(),
            plen: 128,
            nodad: true,
        };
        encode_addr(&mut buf, AddrOpKind::Add, &r, 9);
        let (ty, seq, body) = Messages(&buf).next().unwrap().unwrap();
        assert_eq!(ty, libc::RTM_NEWADDR);
        assert_eq!(seq, 9);
        assert_eq!(
            &body[..4],
            &[libc::AF_INET6 as u8, 128, IFA_F_NODAD as u8, 0]
        );
        let a = parse_addr(body).unwrap().unwrap();
        assert_eq!(a.addr, r.addr);
        assert_eq!(a.ifindex, 7);
        assert_eq!(a.flags, IFA_F_NODAD);
    }

    #[test]
    fn address_error_names_address_and_interface() {
        let e = NetlinkError::Address {
            op: AddrOpKind::Add,
            addr: "10.200.1.5".parse().unwrap(),
            plen: 32,
            iface: "veth0".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        let s = e.to_string();
        assert!(
            s.starts_with("cannot add address 10.200.1.5/32 to veth0: "),
            "{s}"
        );
        assert!(s.contains("already on the interface"), "{s}");
    }

    #[test]
    fn lists_loopback_of_current_namespace() {
        let links = links().expect("RTM_GETLINK dump");
        assert!(links.iter().any(|l| l.name == "lo" && l.ifindex == 1));
    }
}
